from dataclasses import dataclass, field

import pytest

from grpolab.config import Config, load_config
from grpolab.errors import ConfigError


@dataclass
class Inner:
    size: int = 1


@dataclass
class Root:
    name: str = "x"
    rate: float = 0.5
    items: list[Inner] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)

    def validate(self):
        if self.inner.size < 0:
            raise ConfigError("inner.size: negative")


def test_load_config_builds_any_root(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: y\nitems:\n  - {size: 3}\n  - size: 4\n")
    config = load_config(str(path), ["inner.size=2", "rate=1e-5"], root=Root)
    assert config == Root(name="y", rate=1e-5, items=[Inner(3), Inner(4)], inner=Inner(2))
    with pytest.raises(ConfigError, match="inner.size: negative"):
        load_config(None, ["inner.size=-1"], root=Root)
    with pytest.raises(ConfigError, match=r"items.1.size: got 'a', expected an integer"):
        load_config(None, ["items=[{size: 1}, {size: a}]"], root=Root)
    with pytest.raises(ConfigError, match="unknown config key 'items.0.colour'"):
        load_config(None, ["items=[{colour: red}]"], root=Root)


def test_train_config_keeps_its_behaviour():
    assert isinstance(load_config(), Config)
    assert load_config(None, ["train.learning_rate=1e-5"]).train.learning_rate == 1e-5
    with pytest.raises(ConfigError, match="rollout.group_size: got 1, expected an integer >= 2"):
        load_config(None, ["rollout.group_size=1"])
    with pytest.raises(ConfigError, match="train.learning_rate: got 'fast', expected a float"):
        load_config(None, ["train.learning_rate=fast"])
