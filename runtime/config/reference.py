"""The README's table of settings, made from their declarations:
`python -m runtime.config.reference` prints it (a test checks the README holds it as printed)."""

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
    return f"`{setting.flag}`"


def _default(value: Any) -> str:
    if value in (None, "", (), {}):
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"`{value}`"


if __name__ == "__main__":
    print(BEGIN)
    print(settings_table())
    print(END)
