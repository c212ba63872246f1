"""The commands an admin trips over (issue 20 section 2), through the real CLI against real stores."""
from __future__ import annotations


from .conftest import run_cli


def _bad_config(tmp_path, name: str = "bad.toml") -> str:
    path = tmp_path / name
    path.write_text("[smtp]\nhostname = \"\"\n")
    return str(path)


def test_config_before_or_after_the_command(tmp_path):
    """`ticketmx --config FILE COMMAND` used to run COMMAND against the embedded defaults (exit 0)."""
    bad = _bad_config(tmp_path)
    for argv in (("--config", bad, "check-config"), ("check-config", "--config", bad), ("-c", bad, "check-config"),
                 (f"--config={bad}", "tickets", "list"), ("tickets", "--config", bad, "list"),
                 ("tickets", "list", "-c", bad), ("--config", bad, "spool", "find", "--since", "1d")):
        proc = run_cli(*argv, check=False)
        assert proc.returncode == 78, (argv, proc.returncode, proc.stdout, proc.stderr)
        assert f"{bad}: smtp.hostname" in proc.stderr, argv
    # the same file twice is one file
    assert run_cli("--config", bad, "check-config", "--config", bad, check=False).returncode == 78


def test_config_given_twice_with_different_files_fails_naming_both(tmp_path):
    bad, other = _bad_config(tmp_path), _bad_config(tmp_path, "other.toml")
    proc = run_cli("--config", other, "check-config", "--config", bad, check=False)
    assert proc.returncode == 2
    assert other in proc.stderr and bad in proc.stderr and "twice" in proc.stderr


def test_env_config_still_works_and_option_wins(tmp_path):
    bad = _bad_config(tmp_path)
    good = tmp_path / "good.toml"
    good.write_text("[smtp]\nhostname = \"mx.example.test\"\n")
    assert run_cli("check-config", env={"TICKETMX_CONFIG": bad}, check=False).returncode == 78
    proc = run_cli("--config", str(good), "check-config", env={"TICKETMX_CONFIG": bad})
    assert proc.stdout.startswith(f"{good}: OK")


def test_version_from_package_metadata():
    from importlib.metadata import version
    proc = run_cli("--version")
    assert proc.stdout.strip() == f"ticketmx {version('ticketmx')}"
