"""Where a client finds its server and keys: one resolver for `manta.Client`, the `manta://`
filesystem and every `manta` command.

`resolve(url=, access_key=, secret_key=, ca_bundle=, profile=)` takes each value from the
first place that has it:

1. the arguments (`Client(...)`, fsspec `storage_options`);
2. the environment: MANTA_URL, else AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL;
   MANTA_ACCESS_KEY + MANTA_SECRET_KEY, else AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY;
   MANTA_CA_BUNDLE, else AWS_CA_BUNDLE;
3. the profile in manta's config file, `$XDG_CONFIG_HOME/manta/config` (default
   `~/.config/manta/config`; MANTA_CONFIG_FILE names another): INI, one `[NAME]` section a
   profile (`[default]`, `[work]`), keys `url`, `access_key`, `secret_key`, `ca_bundle`;
   written by `manta config set`, mode 0600;
4. the same profile in the AWS shared files, as boto3 and the aws CLI read them:
   `~/.aws/credentials` (AWS_SHARED_CREDENTIALS_FILE) `[NAME]` with `aws_access_key_id` and
   `aws_secret_access_key`; `~/.aws/config` (AWS_CONFIG_FILE) `[default]` or
   `[profile NAME]` with `endpoint_url`, `ca_bundle` (and keys), where the endpoint of a
   `services = S` section (`[services S]` `s3 =` / `  endpoint_url = ...`) comes first;
5. the root credentials file the server writes in its data dir (MANTA_DATA, default
   ./manta-data), for a client on the server host; the URL defaults to
   http://127.0.0.1:9000.

The profile is the `profile` argument, else MANTA_PROFILE, else AWS_PROFILE, else
`default`. A profile passed as an argument moves step 3-4 above the environment (as
boto3's `Session(profile_name=)` does); a profile named by an argument or a variable that no
file holds is an error, while a missing `default` is not. The access key and the secret key
always come from one place, as a pair. `Settings.sources` says where each value came from;
`lookup` is `resolve` without the error for missing keys (`manta config show`).
`boto3_session()` is the session the clients make boto3 clients from: it reads no AWS file
(resolution happened here), so a profile only manta's file holds does not upset boto3.

An https server's certificate is checked against the CA bundle, else the default CAs;
`tls_failure` words the error when it does not verify.
"""

from __future__ import annotations

import configparser
import functools
import json
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from manta.client.errors import BadCredentials

__all__ = ["Credentials", "Settings", "aws_config_path", "aws_credentials_path", "boto3_session", "config_path",
           "lookup", "read_ini", "resolve", "selected_profile", "ssl_context", "tls_failure"]

DEFAULT_URL = "http://127.0.0.1:9000"
DEFAULT_DATA_DIR = "./manta-data"
DEFAULT_PROFILE = "default"
ROOT_CREDENTIALS_FILE = "root-credentials.json"  # written by the server (manta.server.keys)
FIELDS = ("url", "access_key", "secret_key", "ca_bundle")
PROFILE_VARIABLES = ("MANTA_PROFILE", "AWS_PROFILE")
_AWS_NAMES = {"endpoint_url": "url", "aws_access_key_id": "access_key",
              "aws_secret_access_key": "secret_key", "ca_bundle": "ca_bundle"}
URL_VARIABLES = ("MANTA_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
KEY_VARIABLES = (("MANTA_ACCESS_KEY", "MANTA_SECRET_KEY"), ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
CA_BUNDLE_VARIABLES = ("MANTA_CA_BUNDLE", "AWS_CA_BUNDLE")


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str = field(repr=False)


@dataclass(frozen=True)
class Settings:
    """What a client uses, and for each field of FIELDS the place it came from."""

    url: str
    access_key: str | None
    secret_key: str | None = field(repr=False)
    ca_bundle: str | None
    profile: str
    sources: dict[str, str] = field(default_factory=dict)
    looked_in: tuple[str, ...] = ()  # every place searched for keys, for messages

    @property
    def credentials(self) -> Credentials | None:
        if self.access_key and self.secret_key:
            return Credentials(self.access_key, self.secret_key)
        return None


@dataclass(frozen=True)
class _Place:
    name: str
    values: dict[str, str]
    may_hold_keys: bool = True


def config_path() -> str:
    """manta's config file: MANTA_CONFIG_FILE, else $XDG_CONFIG_HOME/manta/config, else
    ~/.config/manta/config."""
    if os.environ.get("MANTA_CONFIG_FILE"):
        return os.path.expanduser(os.environ["MANTA_CONFIG_FILE"])
    base = os.environ.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "manta", "config")


def aws_credentials_path() -> str:
    return os.path.expanduser(os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials")


def aws_config_path() -> str:
    return os.path.expanduser(os.environ.get("AWS_CONFIG_FILE") or "~/.aws/config")


def selected_profile(profile: str | None = None) -> tuple[str, str | None]:
    """The profile in use and what named it (None for the implicit `default`)."""
    if profile:
        return profile, "argument"
    for name in PROFILE_VARIABLES:
        if os.environ.get(name):
            return os.environ[name], name
    return DEFAULT_PROFILE, None


def read_ini(path: str) -> configparser.ConfigParser:
    """An INI file as boto3 reads it (no interpolation, no DEFAULT section); a missing or
    unreadable file is empty, a malformed one a ValueError naming it."""
    parser = configparser.ConfigParser(interpolation=None, default_section="\0", strict=False)
    try:
        with open(path, encoding="utf-8") as fh:
            parser.read_file(fh, source=path)
    except OSError:
        pass
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a valid INI file ({exc})") from None
    return parser


def _section(parser: configparser.ConfigParser, name: str) -> dict[str, str]:
    return {k: v.strip() for k, v in parser.items(name) if v.strip()} if parser.has_section(name) else {}


def _nested(value: str) -> dict[str, str]:
    """`s3 =` followed by indented `key = value` lines."""
    pairs = (line.split("=", 1) for line in value.splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs if v.strip()}


def _profile_places(profile: str) -> tuple[list[_Place], bool]:
    """The profile's places in manta's config file and the AWS files, and whether any file
    has the profile at all."""
    path = config_path()
    parser = read_ini(path)
    found = parser.has_section(profile)
    values = _section(parser, profile)
    places = [_Place(f"{path} [{profile}]", {k: v for k, v in values.items() if k in FIELDS})]

    path = aws_credentials_path()
    parser = read_ini(path)
    found = found or parser.has_section(profile)
    places.append(_Place(f"{path} [{profile}]", _aws(_section(parser, profile))))

    path = aws_config_path()
    parser = read_ini(path)
    names = [f"profile {profile}"] + ([profile] if profile == DEFAULT_PROFILE else [])
    section = next((name for name in names if parser.has_section(name)), names[0])
    found = found or parser.has_section(section)
    values = _section(parser, section)
    services = values.get("services")
    if services:
        s3 = _nested(_section(parser, f"services {services}").get("s3", ""))
        places.append(_Place(f"{path} [services {services}] s3", _aws(s3), may_hold_keys=False))
    places.append(_Place(f"{path} [{section}]", _aws(values)))
    return places, found


def _aws(values: dict[str, str]) -> dict[str, str]:
    return {_AWS_NAMES[k]: v for k, v in values.items() if k in _AWS_NAMES}


def _env_places() -> Iterator[_Place]:
    env = os.environ
    for name in URL_VARIABLES:
        yield _Place(name, {"url": env[name]} if env.get(name) else {}, may_hold_keys=False)
    for access, secret in KEY_VARIABLES:
        pair = {"access_key": env.get(access, ""), "secret_key": env.get(secret, "")}
        yield _Place(f"{access}/{secret}", pair if all(pair.values()) else {})
    for name in CA_BUNDLE_VARIABLES:
        yield _Place(name, {"ca_bundle": env[name]} if env.get(name) else {}, may_hold_keys=False)


def _data_dir_place() -> _Place:
    path = os.path.join(os.environ.get("MANTA_DATA") or DEFAULT_DATA_DIR, ROOT_CREDENTIALS_FILE)
    try:
        with open(path) as fh:
            data = json.load(fh)
        values = {"access_key": str(data["access_key"]), "secret_key": str(data["secret_key"])}
    except (OSError, ValueError, KeyError, TypeError):
        values = {}
    return _Place(f"root credentials {path} (MANTA_DATA)", values)


def lookup(url: str | None = None, access_key: str | None = None, secret_key: str | None = None,
           ca_bundle: str | None = None, profile: str | None = None) -> Settings:
    """The settings as `resolve` finds them, with keys that may be missing (None)."""
    if bool(access_key) != bool(secret_key):
        raise ValueError("pass both access_key and secret_key, or neither")
    given = {"url": url, "access_key": access_key, "secret_key": secret_key, "ca_bundle": ca_bundle}
    name, named_by = selected_profile(profile)
    in_profile, found = _profile_places(name)
    if named_by is not None and not found:
        files = ", ".join((config_path(), aws_credentials_path(), aws_config_path()))
        raise BadCredentials(f"no credentials: profile {name!r} (from {named_by}) is in none of {files}")
    arguments = [_Place("the arguments", {k: v for k, v in given.items() if v})]
    env = list(_env_places())
    places = (arguments + in_profile + env if named_by == "argument" else arguments + env + in_profile)
    places += [_data_dir_place(), _Place("default", {"url": DEFAULT_URL}, may_hold_keys=False)]

    chosen: dict[str, str] = {}
    sources: dict[str, str] = {}
    for place in places:
        for key in ("url", "ca_bundle"):
            if key not in chosen and key in place.values:
                chosen[key], sources[key] = place.values[key], place.name
        if "access_key" not in chosen and place.values.get("access_key") and place.values.get("secret_key"):
            chosen["access_key"], chosen["secret_key"] = place.values["access_key"], place.values["secret_key"]
            sources["access_key"] = sources["secret_key"] = place.name
    bundle = chosen.get("ca_bundle")
    return Settings(url=chosen["url"], access_key=chosen.get("access_key"), secret_key=chosen.get("secret_key"),
                    ca_bundle=os.path.expanduser(bundle) if bundle else None, profile=name, sources=sources,
                    looked_in=tuple(p.name for p in places if p.may_hold_keys))


def resolve(url: str | None = None, access_key: str | None = None, secret_key: str | None = None,
            ca_bundle: str | None = None, profile: str | None = None) -> Settings:
    """The server URL, keys and CA bundle a client uses (see the module docstring).
    BadCredentials, naming every place looked in, when no place has both keys."""
    settings = lookup(url, access_key, secret_key, ca_bundle, profile)
    if settings.credentials is None:
        raise BadCredentials(
            "no credentials: looked in " + "; ".join(settings.looked_in) + ". Pass access_key and "
            "secret_key, set MANTA_ACCESS_KEY and MANTA_SECRET_KEY, or write a profile with "
            "`manta config set --url URL --access-key KEY --secret-key SECRET`")
    return settings


@functools.cache
def boto3_session() -> Any:
    """A boto3 session that reads no AWS file and no profile: `resolve` has done that, and
    the clients made from it get the URL, keys and CA bundle explicitly. (boto3's default
    session fails with ProfileNotFound when AWS_PROFILE names a profile only manta's file
    holds, and keeps the files it read first for the life of the process.)"""
    import boto3
    import botocore.session

    unset = (None, None, None, None)  # (instance name, env var, default, conversion)
    return boto3.session.Session(botocore_session=botocore.session.Session(session_vars={
        "profile": unset, "config_file": (None, None, os.devnull, None),
        "credentials_file": (None, None, os.devnull, None)}))


def ssl_context(ca_bundle: str | None) -> ssl.SSLContext:
    """The context for https requests: the default CAs, or only those in `ca_bundle`.
    A bundle that cannot be read is a ValueError naming it."""
    if ca_bundle is None:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"CA bundle {ca_bundle}: {getattr(exc, 'strerror', None) or exc}") from None


def tls_failure(url: str, exc: BaseException) -> str | None:
    """A message for an https connection that failed in TLS (somewhere in `exc`'s chain),
    or None when the failure was something else."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        item = todo.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ssl.SSLCertVerificationError):
            return (f"the TLS certificate of {url} does not verify ({item.verify_message or item.reason}): "
                    "set MANTA_CA_BUNDLE (or ca_bundle in the profile) to the CA certificate (PEM) "
                    "that signed it")
        if isinstance(item, ssl.SSLError):
            return f"TLS with {url} failed ({item.reason or item}): is it an https server?"
        kwargs = getattr(item, "kwargs", None)  # botocore's exceptions keep their cause there
        todo += [item.__cause__, item.__context__, getattr(item, "reason", None), *item.args,
                 *(kwargs.values() if isinstance(kwargs, dict) else ())]
    return None
