"""`grpolab bench generate`: its key=value settings are validated before any model is loaded."""

from __future__ import annotations

import pytest

from grpolab.bench.generate import parse
from grpolab.cli import main
from grpolab.errors import ConfigError


def test_parse_reads_overrides():
    config = parse(["model=tiny-random", "new_tokens=8,16", "repeats=2", "dtype=fp32"])
    assert (config.model, config.new_tokens, config.repeats, config.dtype) == ("tiny-random", "8,16", 2, "fp32")


@pytest.mark.parametrize(
    "override", ["colour=red", "repeats=0", "new_tokens=8,x", "dtype=fp16", "dtype=fp32,fp32", "prompts=two"]
)
def test_parse_rejects_bad_settings(override):
    with pytest.raises(ConfigError):
        parse([override])


def test_cli_reports_a_bad_setting_in_one_line(capsys):
    assert main(["bench", "generate", "colour=red"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("grpolab bench: error:") and "colour" in err and "\n" not in err


def test_bench_generate_prints_one_json_line_per_setting(capsys):
    import json

    argv = ["model=tiny-random", "new_tokens=3,5", "repeats=1", "warmup=0", "prompts=2", "samples=2"]
    assert main(["bench", "generate", *argv]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["new_tokens"] for line in lines] == [3, 5]
    for line in lines:
        assert line["batch"] == 4 and line["engine_tokens_per_s"] > 0 and line["hf_tokens_per_s"] > 0
        ratio = line["engine_tokens_per_s"] / line["hf_tokens_per_s"]  # the JSON rounds it to 2 decimals
        assert line["speedup"] == pytest.approx(ratio, rel=0.01, abs=0.005)
