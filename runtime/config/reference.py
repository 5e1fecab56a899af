"""The README's table of settings, made from their declarations:
`python -m runtime.config.reference` prints it, `--update README.md` puts it in place (a test
checks the README holds it as printed)."""

from __future__ import annotations

from typing import Any

from runtime.config.catalog import SETTINGS, Setting

BEGIN = "<!-- settings: python -m runtime.config.reference -->"
END = "<!-- end of settings -->"


def settings_table() -> str:
    lines = [
        "| setting | flag | environment | service JSON | default |",
        "|---|---|---|---|---|",
    ]
    for setting in SETTINGS.values():
        flag = _flag(setting)
        keys = ", ".join(
            f"`{key.path}`" + (f" ({key.note})" if key.note else "")
            for key in setting.declared.json
        )
        lines.append(
            f"| `{setting.name}`: {setting.help.replace('<', '&lt;')} | {flag} | `{setting.env}` | "
            f"{keys} | "
            f"{_default(setting.default)} |"
        )
    return "\n".join(lines)


def _flag(setting: Setting) -> str:
    if setting.flag is None:
        return ""
    if setting.kind == "dict":
        return f"`{setting.flag} KEY=VALUE` (repeatable)"
    if setting.kind == "list":
        return f"`{setting.flag} {setting.declared.metavar or 'VALUE'} ...`"
    return f"`{setting.flag}`"


def _default(value: Any) -> str:
    if value in (None, "", (), {}):
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"`{value}`"


def with_table(document: str) -> str:
    """`document` with the text between the markers replaced by the current table."""
    start, end = document.index(BEGIN) + len(BEGIN), document.index(END)
    return f"{document[:start]}\n{settings_table()}\n{document[end:]}"


if __name__ == "__main__":
    import sys
    from pathlib import Path

    if sys.argv[1:2] == ["--update"]:
        path = Path(sys.argv[2])
        path.write_text(with_table(path.read_text()))
    else:
        print(f"{BEGIN}\n{settings_table()}\n{END}")
