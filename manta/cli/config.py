"""`manta config set | show`: named profiles in manta's config file (`~/.config/manta/config`,
INI, one `[NAME]` section a profile, mode 0600), read by every `manta` command,
`manta.Client()` and `manta://` (resolution order: `manta.client.settings`).

    manta config set --url http://127.0.0.1:9000 --access-key AK --secret-key -   # secret on stdin
    MANTA_PROFILE=work manta ls
    manta config show --json
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import sys
import tempfile
from typing import Any

from manta.cli.common import CliError, subcommand

__all__ = ["register"]

OPTIONS = (("url", "URL", "server URL, http://HOST:PORT or https://HOST:PORT"),
           ("access_key", "KEY", "access key id"),
           ("secret_key", "SECRET", "secret key ('-': read it from stdin, out of the process list)"),
           ("ca_bundle", "FILE", "CA certificates (PEM) an https server's certificate is checked against"))


def register(sub: Any) -> None:
    """Add `config` to the `manta` command's subparsers."""
    p = sub.add_parser("config", help="named client profiles (server URL, keys, CA bundle)",
                       description="Named client profiles in manta's config file:\n"
                                   "$XDG_CONFIG_HOME/manta/config (default ~/.config/manta/config;\n"
                                   "MANTA_CONFIG_FILE names another). The profile in use is --profile,\n"
                                   "else MANTA_PROFILE, else AWS_PROFILE, else 'default'.",
                       epilog="example:\n  manta config set --url http://127.0.0.1:9000 --access-key AK "
                              "--secret-key SK\n  manta config show",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    cmds = p.add_subparsers(dest="config_command", required=True)
    s = subcommand(cmds, "set", _set, "write values into a profile (others are kept)",
                   "manta config set --url http://127.0.0.1:9000 --access-key AK --secret-key SK")
    s.add_argument("--profile", help="the profile to write (default: MANTA_PROFILE, AWS_PROFILE, 'default')")
    for name, metavar, text in OPTIONS:
        s.add_argument("--" + name.replace("_", "-"), dest=name, metavar=metavar, help=text)
    s = subcommand(cmds, "show", _show, "the server, keys and CA bundle a client would use, and where "
                   "each comes from (the secret key masked)", "manta config show --profile work --json")
    s.add_argument("--profile", help="show this profile (its values then come before the environment's)")
    s.add_argument("--json", action="store_true", help="one JSON object")


def _set(args: argparse.Namespace) -> int:
    from manta.client.settings import config_path, read_ini, selected_profile

    values = {name: getattr(args, name) for name, _, _ in OPTIONS if getattr(args, name) is not None}
    if not values:
        raise CliError("config set: nothing to set (give --url, --access-key, --secret-key or --ca-bundle)")
    if values.get("secret_key") == "-":
        values["secret_key"] = sys.stdin.readline().strip()
    if "url" in values and not values["url"].startswith(("http://", "https://")):
        raise CliError(f"--url {values['url']}: expected http://HOST:PORT or https://HOST:PORT")
    if "ca_bundle" in values:
        values["ca_bundle"] = os.path.abspath(os.path.expanduser(values["ca_bundle"]))
        if not os.path.isfile(values["ca_bundle"]):
            raise CliError(f"--ca-bundle {values['ca_bundle']}: no such file")
    if any(not value or any(c in value for c in "\r\n") for value in values.values()):
        raise CliError("config set: values must be non-empty single lines")
    profile = selected_profile(args.profile)[0]
    path = config_path()
    if os.path.exists(path) and not os.path.isfile(path):
        raise CliError(f"{path}: not a regular file (MANTA_CONFIG_FILE?); the profile is not written")
    try:
        parser = read_ini(path)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if not parser.has_section(profile):
        parser.add_section(profile)
    for name, value in values.items():
        parser.set(profile, name, value)
    try:
        _write_private(path, parser)
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror or exc}") from None
    print(f"manta: profile {profile!r} written to {path} ({', '.join(values)})")
    return 0


def _write_private(path: str, parser: configparser.ConfigParser) -> None:
    """Replace `path` atomically with a file only its owner can read (0600, directory 0700)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".config-", dir=directory)  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            parser.write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def mask(secret: str) -> str:
    """Enough of a secret key to tell two apart, never the key."""
    return "****" + secret[-4:] if len(secret) >= 16 else "****"


def _show(args: argparse.Namespace) -> int:
    from manta.client import MantaError
    from manta.client.settings import aws_config_path, aws_credentials_path, config_path, lookup

    try:
        settings = lookup(profile=args.profile)
    except (MantaError, ValueError) as exc:
        raise CliError(str(exc)) from None
    shown = {"url": settings.url, "access_key": settings.access_key,
             "secret_key": mask(settings.secret_key) if settings.secret_key else None,
             "ca_bundle": settings.ca_bundle}
    files = {"config": config_path(), "aws_credentials": aws_credentials_path(), "aws_config": aws_config_path()}
    if args.json:
        print(json.dumps({"profile": settings.profile, "files": files,
                          **{name: {"value": value, "source": settings.sources.get(name)}
                             for name, value in shown.items()}}, indent=2))
        return 0
    print(f"{'profile':<11} {settings.profile}")
    for name, value in shown.items():
        where = settings.sources.get(name)
        print(f"{name:<11} {value or '-':<42} {'(' + where + ')' if where else '(not set)'}")
    print("files       " + ", ".join(files.values()))
    return 0
