"""The generated reference of every config key."""


def test_docs_config_reference_is_the_generated_one() -> None:
    from pathlib import Path

    from embedlab.config import reference_markdown

    path = Path(__file__).resolve().parents[2] / "docs" / "config.md"
    assert path.read_text() == reference_markdown(), "regenerate docs/config.md from reference_markdown()"
