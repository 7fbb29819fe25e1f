"""tests/vectors/enrollment-v1.json and the values quoted in docs/protocol.md are regenerated
from the code and compared byte for byte."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors" / "enrollment-v1.json"
PROTOCOL = ROOT / "docs" / "protocol.md"


def load_generator():
    spec = importlib.util.spec_from_file_location("generate_vectors", ROOT / "tests" / "vectors" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def regenerated():
    return load_generator().render()


def test_vector_file_is_reproduced_byte_for_byte(regenerated):
    assert VECTORS.read_text() == regenerated


def test_vector_transcript_has_every_frame_in_order(regenerated):
    frames = json.loads(regenerated)["frames"]
    assert [(f["from"], f["type"], f["tls"]) for f in frames] == [
        ("requester", "hello", False), ("appliance", "challenge", False), ("requester", "client_proof", False),
        ("appliance", "server_proof", False), ("appliance", "appliance_proof", True),
        ("requester", "finish", True), ("appliance", "enrolled", True)]


def lookup(data, path: str):
    for part in path.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def quoted_vectors() -> list[tuple[str, str]]:
    text = PROTOCOL.read_text()
    blocks = re.findall(r"^```vectors\n(.*?)^```", text, flags=re.S | re.M)
    assert blocks, "docs/protocol.md has no ```vectors block"
    lines = [line for block in blocks for line in block.splitlines() if line.strip()]
    return [tuple(part.strip() for part in line.split(" = ", 1)) for line in lines]


def test_protocol_doc_quotes_the_regenerated_values(regenerated):
    data = json.loads(regenerated)
    quoted = quoted_vectors()
    assert len(quoted) >= 15
    for path, value in quoted:
        expected = lookup(data, path)
        assert str(expected) == value, f"docs/protocol.md: {path} differs from the regenerated vectors"
    paths = {path for path, _ in quoted}
    assert {"derived.K", "derived.transcript_hash", "frames.0.hex"} <= paths


def test_protocol_doc_lists_every_error_code_and_label():
    from firsttrust.errors import all_codes
    from firsttrust.keyschedule import HKDF_SALT, LABELS
    text = PROTOCOL.read_text()
    for code in all_codes():
        assert f"`{code}`" in text, f"error code {code} is not documented"
    for label in LABELS + (HKDF_SALT,):
        assert label.decode() in text, f"KDF label {label!r} is not documented"
