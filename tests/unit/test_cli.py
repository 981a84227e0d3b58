"""The command line as a user meets it: a usage error is one line and exit code
2, ``--version`` answers, and the ``models`` commands read the configured
registry (``-c``: data_dir, registry_dir, an s3:// registry_url)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from daemon.cli import main
from models.registry import Registry
from models.registry_mirror import MirroredRegistry
from tests.unit.test_registry import FILES

REPO = Path(__file__).resolve().parents[2]


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--bogus"], "driftd run: No such option: --bogus (see driftd run --help)"),
        (
            ["models", "show"],
            "driftd models show: Missing argument 'version' (see driftd models show --help)",
        ),
        (["replay", "--rate", "fast"], "driftd replay: Invalid value for '--rate'"),
        (["nonsense"], "driftd: No such command 'nonsense' (see driftd --help)"),
        (
            ["run", "-c", "/nowhere/config.toml"],
            "driftd: config file /nowhere/config.toml does not exist",
        ),
    ],
)
def test_a_usage_error_is_one_line_and_exit_code_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(argv, capsys)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith(message), err


def test_the_installed_command_reports_its_version_and_a_bad_option_without_a_traceback() -> None:
    driftd = Path(sys.executable).parent / "driftd"
    shown = subprocess.run(
        [str(driftd), "--version"], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert (shown.returncode, shown.stdout) == (0, f"driftd {version('driftd')}\n")
    bad = subprocess.run(
        [str(driftd), "run", "--bogus"], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert (
        bad.returncode == 2
        and bad.stdout == ""
        and bad.stderr == "driftd run: No such option: --bogus (see driftd run --help)\n"
    )


def test_help_texts_keep_their_square_brackets(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["run", "--help"], capsys)
    assert code == 0 and "[monitor], [learning]" in out


def test_models_commands_read_the_configured_registry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # <daemon.data_dir>/registry, the default place
    registry = Registry(tmp_path / "data" / "registry")
    first = registry.publish(FILES, parent=None, info={}).version
    second = registry.publish(FILES, parent=first, info={}).version
    registry.set_current(second)
    config = tmp_path / "config.toml"
    config.write_text(f'[daemon]\ndata_dir = "{tmp_path / "data"}"\n')
    code, out, _ = run_main(["models", "list", "-c", str(config)], capsys)
    rows = [line.split() for line in out.splitlines()[1:]]
    # its parent
    assert (
        code == 0 and rows[0][0] == first and rows[1][:2] == ["*", second] and rows[1][3] == first
    )
    code, out, _ = run_main(["models", "rollback", "-c", str(config)], capsys)
    assert (code, out, registry.current()) == (0, f"{first}\n", first)
    code, _, err = run_main(["models", "list", "-c", str(tmp_path / "missing.toml")], capsys)
    assert code == 2 and "missing.toml does not exist" in err


def test_models_list_reads_an_s3_registry(
    tmp_path: Path, s3: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    import s3fs

    s3fs.S3FileSystem(**s3).mkdir("driftd-cli")
    url = "s3://driftd-cli/models"
    elsewhere = MirroredRegistry(tmp_path / "publisher", url, s3)  # another host published it
    published = elsewhere.publish(FILES, parent=None, info={}).version
    elsewhere.set_current(published)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[daemon]\ndata_dir = "{tmp_path / "here"}"\n[models]\nregistry_url = '
        f'"{url}"\n'
        f'registry_storage_options = {{endpoint_url = "{s3["endpoint_url"]}"}}\n'
    )
    code, out, _ = run_main(["models", "list", "-c", str(config)], capsys)
    assert code == 0 and out.splitlines()[1].split()[:2] == ["*", published], out
    code, out, _ = run_main(["models", "list", "--registry", str(tmp_path / "empty")], capsys)
    assert code == 0 and out == f"no versions in {tmp_path / 'empty'}\n"
