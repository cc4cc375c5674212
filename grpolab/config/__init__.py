"""Typed configuration: one dataclass per concern, loaded from YAML plus `key.sub=value` overrides.

Every field is validated when the config is built, and a bad key or value raises `ConfigError` whose
message names the key and what is allowed, in one line. The resolved config is saved verbatim into the
run folder (`config.yaml`), so a run can always be reproduced from its own folder.

The layers: `schema` (the dataclasses and their ranges), `checks` (across keys), `loading` (YAML, overrides,
types), `describe` (`--help` lines from the fields' comments), `places` (the run folder's name).
"""

from grpolab.config.checks import check_ranges
from grpolab.config.describe import describe_keys, field_comment, field_comments, shortened
from grpolab.config.loading import apply_key, flatten, load_config, parse_override, settings_overrides, to_dict, to_yaml
from grpolab.config.places import run_place, task_folder_name
from grpolab.config.schema import (
    RANGES,
    Config,
    EvalConfig,
    GenerationRunConfig,
    GRPOConfig,
    LogConfig,
    LoraConfig,
    ParallelConfig,
    PPOConfig,
    RewardConfig,
    RolloutConfig,
    RunConfig,
    TrainConfig,
)
from grpolab.errors import ConfigError

__all__ = [
    "RANGES",
    "Config",
    "ConfigError",
    "EvalConfig",
    "GRPOConfig",
    "GenerationRunConfig",
    "LogConfig",
    "LoraConfig",
    "PPOConfig",
    "ParallelConfig",
    "RewardConfig",
    "RolloutConfig",
    "RunConfig",
    "TrainConfig",
    "apply_key",
    "check_ranges",
    "describe_keys",
    "field_comment",
    "field_comments",
    "flatten",
    "load_config",
    "parse_override",
    "run_place",
    "settings_overrides",
    "shortened",
    "task_folder_name",
    "to_dict",
    "to_yaml",
]
