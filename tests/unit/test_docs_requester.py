"""docs/requester.md's troubleshooting table names every error code the requester can show."""

from pathlib import Path

from firsttrust.errors import FirsttrustError, all_codes

ROOT = Path(__file__).resolve().parents[2]


def requester_codes() -> set[str]:
    import firsttrust.requester.cli  # noqa: F401 - load every module that defines an error
    import firsttrust.requester.library  # noqa: F401

    codes, stack = set(), [FirsttrustError]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.__module__.startswith("firsttrust.requester") and isinstance(cls.__dict__.get("code"), str):
            codes.add(cls.code)
    return codes - {"requester_error"}


def test_every_code_the_requester_can_show_is_in_the_troubleshooting_table():
    text = (ROOT / "docs" / "requester.md").read_text()
    table = text[text.index("## Troubleshooting"):]
    missing = sorted(code for code in set(all_codes()) | requester_codes() if f"`{code}`" not in table)
    assert not missing, f"docs/requester.md lacks {missing}"
    assert {"unconfirmed", "name_taken", "connection"} <= requester_codes()
