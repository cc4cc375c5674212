"""`model=random:<config.json>[:<tokenizer model>]`: a real architecture with random weights, built once by a child
process into the model cache, then loaded like any other folder; bad configs are refused in one line."""

from __future__ import annotations

import json

import pytest

from grpolab.errors import ModelError
from grpolab.model import loading
from grpolab.model.loading import load_model, load_tokenizer, resolve_model_path, split_random_spec
from tests.conftest import TINY_QWEN2

# Hand count for TINY_QWEN2 (head_dim 8, so k/v project to 2 * 8 = 16; Qwen2 has q/k/v biases, a tied head):
# embedding 128*32; per layer q 32*32+32, k 32*16+16, v 32*16+16, o 32*32, gate/up/down 3*32*64, 2 norms 2*32.
LAYER = (32 * 32 + 32) + 2 * (32 * 16 + 16) + 32 * 32 + 3 * 32 * 64 + 2 * 32
TINY_QWEN2_PARAMETERS = 128 * 32 + 2 * LAYER + 32


def write_config(folder, data, name="config.json"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One build of TINY_QWEN2 with the tiny-random tokenizer, in a cache of its own: (config file, folder)."""
    root = tmp_path_factory.mktemp("random-model")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRPOLAB_CACHE", str(root / "cache"))
        config = write_config(root / "qwen2", TINY_QWEN2)
        yield config, resolve_model_path(f"random:{config}:tiny-random", log=lambda message: None)


def no_child(*args, **kwargs):
    raise AssertionError("a cached random model started a child process")


def test_the_folder_loads_as_a_hugging_face_model_with_the_configs_shape(built):
    _, path = built
    model, tokenizer = load_model(path), load_tokenizer(path)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert sum(parameter.numel() for parameter in model.parameters()) == TINY_QWEN2_PARAMETERS
    assert model.config.vocab_size == 128 and len(tokenizer) == 103  # tiny-random's character vocabulary fits
    assert model.config.eos_token_id == tokenizer.eos_token_id == model.generation_config.eos_token_id
    generation = json.loads((loading.Path(path) / "generation_config.json").read_text())
    assert (generation["eos_token_id"], generation["pad_token_id"]) == (tokenizer.eos_token_id, tokenizer.pad_token_id)
    origin = json.loads((loading.Path(path) / "random_origin.json").read_text())
    assert origin == {"model": f"random:{built[0].resolve()}", "tokenizer": "tiny-random"}
    modes = {entry.name: entry.stat().st_mode & 0o777 for entry in loading.Path(path).iterdir()}
    assert modes["model.safetensors"] == modes["config.json"]  # as readable as the rest of the cache


def test_the_second_use_reuses_the_cache_without_a_child_process(built, monkeypatch):
    config, path = built
    monkeypatch.setattr(loading.subprocess, "run", no_child)
    assert resolve_model_path(f"random:{config}:tiny-random") == path
    assert resolve_model_path(f"random:{config.parent}:tiny-random") == path  # a folder holding the same file
    assert loading.Path(path).name.startswith("random-") and len(loading.Path(path).name) == len("random-") + 12


def test_the_weights_are_the_same_for_the_same_config(built, tmp_path, monkeypatch):
    monkeypatch.setenv("GRPOLAB_CACHE", str(tmp_path / "cache"))
    again = resolve_model_path(f"random:{built[0]}:tiny-random", log=lambda message: None)
    first, second = load_model(built[1]), load_model(again)
    assert all((a == b).all() for a, b in zip(first.parameters(), second.parameters(), strict=True))  # seed 0


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("{tmp}/config.json", ("{tmp}/config.json", "smollm2-135m")),
        ("{tmp}/config.json:tiny-random", ("{tmp}/config.json", "tiny-random")),
        ("{tmp}/config.json:{tmp}/tokenizer", ("{tmp}/config.json", "{tmp}/tokenizer")),  # an existing folder
        ("{tmp}/config.json:Owner/tokenizer", ("{tmp}/config.json", "Owner/tokenizer")),  # a hub id
        ("{tmp}/a:b.json", ("{tmp}/a:b.json", "smollm2-135m")),  # a ':' inside an existing path
        ("{tmp}/a:b.json:tiny-random", ("{tmp}/a:b.json", "tiny-random")),
        ("{tmp}/missing:name", ("{tmp}/missing:name", "smollm2-135m")),  # nothing exists: all of it is the path
    ],
)
def test_the_tokenizer_is_split_off_at_the_last_colon_only_when_it_names_a_model(tmp_path, spec, expected):
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "a:b.json").write_text("{}")
    fill = {"tmp": tmp_path}
    assert split_random_spec(spec.format(**fill)) == tuple(part.format(**fill) for part in expected)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "does not exist"),
        ("{not json", "is not JSON"),
        ("[1, 2]", "is not a JSON object"),
        ({"hidden_size": 32}, "has no model_type"),
        ({**TINY_QWEN2, "model_type": "no-such-architecture"}, "not a causal LM architecture that transformers"),
        ({"model_type": "t5"}, "not a causal LM architecture that transformers"),  # known, but no causal LM
    ],
)
def test_a_config_that_cannot_build_a_model_is_refused_in_one_line(tmp_path, monkeypatch, content, words):
    monkeypatch.setenv("GRPOLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(loading.subprocess, "run", no_child)  # refused before any build
    path = tmp_path / "config.json" if content is None else write_config(tmp_path, content)
    with pytest.raises(ModelError, match=words) as error:
        resolve_model_path(f"random:{path}:tiny-random")
    assert "\n" not in str(error.value) and str(error.value).startswith("model: random config")


def test_an_empty_config_path_is_refused():
    with pytest.raises(ModelError, match="needs a config file"):
        resolve_model_path("random:")


def test_a_vocabulary_smaller_than_the_tokenizers_is_refused_by_the_child_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("GRPOLAB_CACHE", str(tmp_path / "cache"))
    path = write_config(tmp_path, {**TINY_QWEN2, "vocab_size": 64})
    with pytest.raises(ModelError, match=r"vocab_size 64, smaller than the 103 tokens") as error:
        resolve_model_path(f"random:{path}:tiny-random", log=lambda message: None)
    assert "\n" not in str(error.value) and "out of range" in str(error.value)
    models = loading.models_dir()
    assert sorted(entry.name for entry in models.iterdir()) == ["tiny-random"]  # no half-built or staging folder
