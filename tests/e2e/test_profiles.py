"""Client configuration that does not depend on the working directory: manta's profiles
(`manta config set/show`), the AWS shared files, the environment and explicit arguments, in
that order of strength, for `manta.Client`, the `manta://` filesystem and the CLI."""

from __future__ import annotations

import json
import os
import pathlib
import stat
import subprocess
import sys
from collections.abc import Iterator

import boto3
import fsspec
import pytest

from manta.client import BadCredentials, Client
from tests.conftest import REPO, ROOT_AK, ROOT_SK, Server, free_port

_CLEARED = ("XDG_CONFIG_HOME",)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without MANTA_*/AWS_* (and XDG_CONFIG_HOME), with this
    worktree's `manta` importable from any directory, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MANTA_", "AWS_")) and k not in _CLEARED}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    return {**env, **extra}


def manta_cli(env: dict[str, str], *args: str, cwd: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "manta", *args], env=env, cwd=cwd, input=stdin,
                          capture_output=True, timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def write_profile(env: dict[str, str], cwd: str, url: str, profile: str = "default",
                  access_key: str = ROOT_AK, secret_key: str = ROOT_SK) -> str:
    """`manta config set` as a user runs it (the secret on stdin); returns its message."""
    done = manta_cli(env, "config", "set", "--profile", profile, "--url", url, "--access-key", access_key,
                     "--secret-key", "-", cwd=cwd, stdin=secret_key.encode() + b"\n")
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    """This process with nothing configured: no MANTA_*/AWS_* variables, HOME an empty temp
    dir (so ~/.config/manta and ~/.aws are empty), MANTA_DATA a dir without root keys."""
    for name in list(os.environ):
        if name.startswith(("MANTA_", "AWS_")) or name in _CLEARED:
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MANTA_DATA", str(tmp_path / "no-data-here"))
    yield home


def aws_files(tmp_path: pathlib.Path, credentials: str, config: str) -> dict[str, str]:
    (tmp_path / "aws-credentials").write_text(credentials)
    (tmp_path / "aws-config").write_text(config)
    return {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
            "AWS_CONFIG_FILE": str(tmp_path / "aws-config")}


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


# -- manta's own profiles -------------------------------------------------------------------

def test_a_profile_written_by_config_set_serves_the_cli_client_and_fs_from_any_directory(
        server: Server, bucket: str, s3: object, home: pathlib.Path, tmp_path: pathlib.Path) -> None:
    s3.put_object(Bucket=bucket, Key="hello.txt", Body=b"hello profile")  # type: ignore[attr-defined]
    env = clean_env(HOME=str(home))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = home / ".config" / "manta" / "config"

    said = write_profile(env, str(elsewhere), server.url)
    assert str(config) in said and "'default'" in said
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
    assert config.read_text().split() == ["[default]", "url", "=", server.url, "access_key", "=", ROOT_AK,
                                         "secret_key", "=", ROOT_SK]

    listed = manta_cli(env, "ls", bucket, cwd=str(elsewhere))
    assert listed.returncode == 0, listed.stderr
    assert "hello.txt" in listed.stdout
    found = manta_cli(env, "find", bucket, cwd=str(elsewhere))
    assert found.returncode == 0 and found.stdout == f"{bucket}/hello.txt\n", found.stderr

    client = Client()  # this process: HOME is the same temp dir, nothing else set
    assert (client.url, client.access_key) == (server.url, ROOT_AK)
    assert client.settings.sources == {name: f"{config} [default]" for name in ("url", "access_key", "secret_key")}
    assert client.get(f"{bucket}/hello.txt") == b"hello profile"
    assert fsspec.filesystem("manta").cat(f"{bucket}/hello.txt") == b"hello profile"

    # show: each value with its source, the secret masked
    shown = manta_cli(env, "config", "show", cwd=str(elsewhere))
    assert shown.returncode == 0, shown.stderr
    assert ROOT_SK not in shown.stdout and f"****{ROOT_SK[-4:]}" in shown.stdout
    assert f"url         {server.url}" in shown.stdout and f"({config} [default])" in shown.stdout
    as_json = json.loads(manta_cli(env, "config", "show", "--json", cwd=str(elsewhere)).stdout)
    assert as_json["profile"] == "default" and as_json["files"]["config"] == str(config)
    assert as_json["url"] == {"value": server.url, "source": f"{config} [default]"}
    assert as_json["access_key"] == {"value": ROOT_AK, "source": f"{config} [default]"}
    assert as_json["secret_key"]["value"] == f"****{ROOT_SK[-4:]}"
    assert as_json["ca_bundle"] == {"value": None, "source": None}


def test_keys_the_server_refuses_are_reported_with_where_they_came_from(
        server: Server, home: pathlib.Path, tmp_path: pathlib.Path) -> None:
    env = clean_env(HOME=str(home))
    config = home / ".config" / "manta" / "config"
    write_profile(env, str(tmp_path), server.url, secret_key="not-the-secret")
    refused = manta_cli(env, "ls", cwd=str(tmp_path))
    assert refused.returncode == 1
    assert refused.stderr.startswith("manta: bad credentials (SignatureDoesNotMatch)")
    assert f"the keys from {config} [default]" in refused.stderr
    with pytest.raises(BadCredentials, match=f"the keys from {config} \\[default\\]"):
        Client().buckets()


def test_config_set_keeps_other_values_and_profiles_and_honours_the_config_file_variables(
        home: pathlib.Path, tmp_path: pathlib.Path) -> None:
    env = clean_env(HOME=str(home))
    ca = tmp_path / "ca.pem"
    ca.write_text("not read here\n")
    write_profile(env, str(tmp_path), "http://127.0.0.1:1", access_key="AK-DEFAULT", secret_key="SK-DEFAULT")
    write_profile(env, str(tmp_path), "http://127.0.0.1:2", profile="work", access_key="AK-WORK",
                  secret_key="SK-WORK")
    done = manta_cli(env, "config", "set", "--url", "http://127.0.0.1:3", "--ca-bundle", "ca.pem", cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    config = home / ".config" / "manta" / "config"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600

    default = Client()
    assert (default.url, default.access_key, default.ca_bundle) == ("http://127.0.0.1:3", "AK-DEFAULT", str(ca))
    assert Client(profile="work").url == "http://127.0.0.1:2"

    # XDG_CONFIG_HOME moves the file; MANTA_CONFIG_FILE names it
    xdg = tmp_path / "xdg"
    said = write_profile(clean_env(HOME=str(home), XDG_CONFIG_HOME=str(xdg)), str(tmp_path), "http://127.0.0.1:4")
    assert str(xdg / "manta" / "config") in said
    named = tmp_path / "named.ini"
    write_profile(clean_env(HOME=str(home), MANTA_CONFIG_FILE=str(named)), str(tmp_path), "http://127.0.0.1:5")
    assert stat.S_IMODE(named.stat().st_mode) == 0o600
    os.environ["XDG_CONFIG_HOME"] = str(xdg)
    assert Client().url == "http://127.0.0.1:4"
    os.environ["MANTA_CONFIG_FILE"] = str(named)
    assert Client().url == "http://127.0.0.1:5"


def test_config_set_refuses_what_a_client_could_not_use(home: pathlib.Path, tmp_path: pathlib.Path) -> None:
    env = clean_env(HOME=str(home))
    for args, message in ((["config", "set"], "nothing to set"),
                          (["config", "set", "--url", "127.0.0.1:9000"], "expected http://HOST:PORT"),
                          (["config", "set", "--ca-bundle", "missing.pem"], "missing.pem: no such file")):
        done = manta_cli(env, *args, cwd=str(tmp_path))
        assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (home / ".config" / "manta" / "config").exists()
    special = manta_cli({**env, "MANTA_CONFIG_FILE": os.devnull}, "config", "set", "--url", "http://h:1",
                        cwd=str(tmp_path))
    assert special.returncode == 1 and "not a regular file" in special.stderr, special.stderr
    assert not os.path.isfile(os.devnull)

    broken = home / ".config" / "manta" / "config"
    broken.parent.mkdir(parents=True)
    broken.write_text("url = no section\n")
    done = manta_cli(env, "ls", cwd=str(tmp_path))
    assert done.returncode == 1 and f"manta: {broken}: not a valid INI file" in done.stderr, done.stderr


# -- the AWS shared files --------------------------------------------------------------------

def test_a_profile_in_the_aws_shared_files_serves_the_cli_client_fs_and_boto3(
        server: Server, bucket: str, s3: object, home: pathlib.Path, tmp_path: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    s3.put_object(Bucket=bucket, Key="aws.txt", Body=b"from the aws files")  # type: ignore[attr-defined]
    files = aws_files(tmp_path, f"[default]\naws_access_key_id = NOTTHISONE\naws_secret_access_key = x\n\n"
                                f"[mantaroot]\naws_access_key_id = {ROOT_AK}\naws_secret_access_key = {ROOT_SK}\n",
                      f"[default]\nregion = us-east-1\n\n[profile mantaroot]\nregion = us-east-1\n"
                      f"endpoint_url = {server.url}\n")
    env = clean_env(HOME=str(home), AWS_PROFILE="mantaroot", **files)

    listed = manta_cli(env, "ls", bucket, cwd=str(tmp_path))
    assert listed.returncode == 0, listed.stderr
    assert "aws.txt" in listed.stdout

    for name, value in {"AWS_PROFILE": "mantaroot", **files}.items():
        monkeypatch.setenv(name, value)
    client = Client()
    assert (client.url, client.access_key) == (server.url, ROOT_AK)
    assert client.settings.profile == "mantaroot"
    assert client.settings.sources == {"url": f"{files['AWS_CONFIG_FILE']} [profile mantaroot]",
                                       "access_key": f"{files['AWS_SHARED_CREDENTIALS_FILE']} [mantaroot]",
                                       "secret_key": f"{files['AWS_SHARED_CREDENTIALS_FILE']} [mantaroot]"}
    assert client.get(f"{bucket}/aws.txt") == b"from the aws files"
    assert fsspec.filesystem("manta").cat(f"{bucket}/aws.txt") == b"from the aws files"

    # boto3 reads the same files the same way
    agreed = boto3.Session().client("s3")
    assert agreed.meta.endpoint_url == server.url
    assert agreed.get_object(Bucket=bucket, Key="aws.txt")["Body"].read() == b"from the aws files"


def test_the_services_section_endpoint_comes_before_the_profiles_own(
        server: Server, bucket: str, home: pathlib.Path, tmp_path: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    files = aws_files(tmp_path, f"[svc]\naws_access_key_id = {ROOT_AK}\naws_secret_access_key = {ROOT_SK}\n",
                      f"[profile svc]\nendpoint_url = {dead_url()}\nservices = manta-s3\nca_bundle = {ca}\n\n"
                      f"[services manta-s3]\ns3 =\n  endpoint_url = {server.url}\n")
    for name, value in {"AWS_PROFILE": "svc", **files}.items():
        monkeypatch.setenv(name, value)
    client = Client()
    assert client.url == server.url and client.ca_bundle == str(ca)
    assert client.settings.sources["url"] == f"{files['AWS_CONFIG_FILE']} [services manta-s3] s3"
    assert boto3.Session().client("s3").meta.endpoint_url == server.url
    assert bucket in client.ls()  # an http server: the CA bundle is not read


# -- precedence and selection ----------------------------------------------------------------

def test_arguments_beat_the_environment_which_beats_profiles_and_manta_files_beat_aws_files(
        server: Server, bucket: str, home: pathlib.Path, tmp_path: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    env = clean_env(HOME=str(home))
    write_profile(env, str(tmp_path), server.url)
    files = aws_files(tmp_path, "[default]\naws_access_key_id = AWSFILEKEY\naws_secret_access_key = AWSFILESECRET\n",
                      f"[default]\nendpoint_url = {dead_url()}\n")
    for name, value in files.items():
        monkeypatch.setenv(name, value)
    config = home / ".config" / "manta" / "config"

    # manta's profile before the AWS files' profile of the same name
    client = Client()
    assert (client.url, client.access_key) == (server.url, ROOT_AK) and bucket in client.ls()
    (config).unlink()
    assert (Client().access_key, Client().settings.sources["url"]) == ("AWSFILEKEY", f"{files['AWS_CONFIG_FILE']} [default]")
    write_profile(env, str(tmp_path), server.url)

    # the environment before any profile, value by value
    other = dead_url()
    monkeypatch.setenv("MANTA_URL", other)
    client = Client()
    assert (client.url, client.access_key) == (other, ROOT_AK)
    assert client.settings.sources["url"] == "MANTA_URL"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead_url())
    assert Client().url == other  # MANTA_URL before AWS_ENDPOINT_URL
    monkeypatch.delenv("MANTA_URL")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", other)
    assert Client().url == other  # the S3 endpoint before the global one
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVAWSKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ENVAWSSECRET")
    assert Client().access_key == "ENVAWSKEY"
    monkeypatch.setenv("MANTA_ACCESS_KEY", "ENVMANTAKEY")
    monkeypatch.setenv("MANTA_SECRET_KEY", "ENVMANTASECRET")
    assert Client().access_key == "ENVMANTAKEY"
    assert Client().settings.sources["access_key"] == "MANTA_ACCESS_KEY/MANTA_SECRET_KEY"
    monkeypatch.setenv("MANTA_SECRET_KEY", "")  # half a pair is no pair
    assert Client().access_key == "ENVAWSKEY"

    # explicit arguments before everything; a working client proves the keys went with them
    client = Client(server.url, ROOT_AK, ROOT_SK)
    assert client.settings.sources == {name: "the arguments" for name in ("url", "access_key", "secret_key")}
    assert bucket in client.ls()
    assert bucket in fsspec.filesystem("manta", url=server.url, access_key=ROOT_AK, secret_key=ROOT_SK).ls("", detail=False)
    with pytest.raises(ValueError, match="both access_key and secret_key"):
        Client(server.url, ROOT_AK)


def test_the_profile_is_chosen_by_argument_then_manta_profile_then_aws_profile(
        server: Server, bucket: str, home: pathlib.Path, tmp_path: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    env = clean_env(HOME=str(home))
    write_profile(env, str(tmp_path), dead_url(), access_key="DEFAULTKEY", secret_key="DEFAULTSECRET")
    write_profile(env, str(tmp_path), server.url, profile="root")
    files = aws_files(tmp_path, "[awsonly]\naws_access_key_id = AWSONLYKEY\naws_secret_access_key = S\n", "")
    for name, value in files.items():
        monkeypatch.setenv(name, value)

    assert Client().access_key == "DEFAULTKEY"
    monkeypatch.setenv("AWS_PROFILE", "awsonly")
    assert Client().access_key == "AWSONLYKEY"
    monkeypatch.setenv("MANTA_PROFILE", "root")
    client = Client()
    assert (client.settings.profile, client.url, client.access_key) == ("root", server.url, ROOT_AK)
    assert bucket in client.ls()
    assert bucket in fsspec.filesystem("manta").ls("", detail=False)
    listed = manta_cli(clean_env(HOME=str(home), MANTA_PROFILE="root"), "ls", cwd=str(tmp_path))
    assert listed.returncode == 0 and bucket in listed.stdout.split(), listed.stderr

    # a profile passed as an argument comes before the environment, as in boto3
    monkeypatch.setenv("MANTA_URL", dead_url())
    assert Client(profile="root").url == server.url
    assert Client().url != server.url


def test_missing_profile_or_keys_name_every_place_looked_in(
        home: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = aws_files(tmp_path, "", "")
    for name, value in files.items():
        monkeypatch.setenv(name, value)
    config = home / ".config" / "manta" / "config"

    with pytest.raises(BadCredentials, match="no credentials") as raised:
        Client()
    message = str(raised.value)
    for place in ("MANTA_ACCESS_KEY/MANTA_SECRET_KEY", "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
                  f"{config} [default]", f"{files['AWS_SHARED_CREDENTIALS_FILE']} [default]",
                  f"{files['AWS_CONFIG_FILE']} [profile default]",
                  f"{tmp_path / 'no-data-here' / 'root-credentials.json'}", "manta config set"):
        assert place in message, (place, message)
    with pytest.raises(BadCredentials, match="no credentials"):
        fsspec.filesystem("manta").ls("", detail=False)

    monkeypatch.setenv("AWS_PROFILE", "nope")
    with pytest.raises(BadCredentials, match="profile 'nope' \\(from AWS_PROFILE\\) is in none of") as raised:
        Client()
    assert all(path in str(raised.value) for path in (str(config), *files.values()))
    with pytest.raises(BadCredentials, match="profile 'other' \\(from argument\\)"):
        Client(profile="other")

    env = clean_env(HOME=str(home), MANTA_PROFILE="nope2", MANTA_DATA=str(tmp_path), **files)
    done = manta_cli(env, "ls", cwd=str(tmp_path))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("manta: no credentials: profile 'nope2' (from MANTA_PROFILE)"), done.stderr
    done = manta_cli(clean_env(HOME=str(home), MANTA_DATA=str(tmp_path), **files), "ls", cwd=str(tmp_path))
    assert done.returncode == 1 and done.stderr.startswith("manta: no credentials: looked in"), done.stderr
    assert str(config) in done.stderr
