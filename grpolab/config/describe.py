"""`--help` for config keys: `key = default  (type) – comment`, the comment read from the dataclass's source."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import textwrap
import tokenize

from grpolab.config.loading import describe_type, field_types
from grpolab.config.schema import Config


def describe_keys(config=None, prefix: str = "") -> list[str]:
    """`key = default  (type) – what it is` lines for `--help`, the description taken from the field's comment."""
    config = config if config is not None else Config()
    lines = []
    for name, tp in field_types(type(config)).items():
        value = getattr(config, name)
        if dataclasses.is_dataclass(tp):
            lines.extend(describe_keys(value, f"{prefix}{name}."))
            continue
        line = f"  {prefix}{name} = {value!r}  ({describe_type(tp)})"
        comment = field_comment(type(config), name)
        lines.append(f"{line} – {shortened(comment, HELP_WIDTH - len(line) - 3)}" if comment else line)
    return lines


HELP_WIDTH = 160  # a --help line's length beyond which a field's comment is cut


def field_comment(cls: type, name: str) -> str:
    """The comment of field `name`, from the nearest class in `cls`'s MRO whose body comments it (a root config
    that redeclares `name` with a new default keeps its base's description)."""
    for klass in cls.__mro__:
        if dataclasses.is_dataclass(klass) and field_comments(klass).get(name):
            return field_comments(klass)[name]
    return ""


@functools.cache
def field_comments(cls: type) -> dict[str, str]:
    """Each field declared in `cls`'s own body -> its comment: the `# ...` on its line, else the comment lines
    directly above it (no blank line between). Read from the class's source once."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source to read (a class built at run time, a frozen install)
        return {}
    comments: dict[str, str] = {}
    above: list[str] = []  # comment lines since the last statement or blank line
    code: list[tokenize.TokenInfo] = []  # the current logical line's tokens
    trailing: list[str] = []  # comments inside the current logical line
    depth, previous = 0, None
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.INDENT:
            depth += 1
        elif token.type == tokenize.DEDENT:
            depth -= 1
        elif token.type == tokenize.COMMENT:
            (trailing if code else above).append(token.string.lstrip("#").strip())
        elif token.type == tokenize.NL:
            if not code and previous != tokenize.COMMENT:  # a blank line ends a comment block
                above = []
        elif token.type == tokenize.NEWLINE:
            is_field = depth == 1 and len(code) > 1 and code[0].type == tokenize.NAME and code[1].string == ":"
            if is_field and (trailing or above):
                comments[code[0].string] = " ".join(trailing or above)
            above, code, trailing = [], [], []
        elif token.type != tokenize.ENDMARKER:
            code.append(token)
        previous = token.type
    return comments


def shortened(text: str, width: int) -> str:
    """`text` cut at a word boundary to at most `width` characters (at least 40), marked with an ellipsis."""
    width = max(width, 40)
    if len(text) <= width:
        return text
    return text[: width - 1].rsplit(" ", 1)[0].rstrip(",;:") + "…"
