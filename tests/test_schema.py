"""proto/pinba.proto matches the Pinba protocol, and tests/pinba_pb2.py matches it."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

import pinba_pb2

PROTO = Path(__file__).resolve().parent.parent / "proto" / "pinba.proto"

# The protocol's field table: number -> (name, type, label).
PROTOCOL = {
    1: ("hostname", "string", "required"),
    2: ("server_name", "string", "required"),
    3: ("script_name", "string", "required"),
    4: ("request_count", "uint32", "required"),
    5: ("document_size", "uint32", "required"),
    6: ("memory_peak", "uint32", "required"),
    7: ("request_time", "float", "required"),
    8: ("ru_utime", "float", "required"),
    9: ("ru_stime", "float", "required"),
    10: ("timer_hit_count", "uint32", "repeated"),
    11: ("timer_value", "float", "repeated"),
    12: ("timer_tag_count", "uint32", "repeated"),
    13: ("timer_tag_name", "uint32", "repeated"),
    14: ("timer_tag_value", "uint32", "repeated"),
    15: ("dictionary", "string", "repeated"),
    16: ("status", "uint32", "optional"),
    17: ("memory_footprint", "uint32", "optional"),
    18: ("requests", "Request", "repeated"),
    19: ("schema", "string", "optional"),
    20: ("tag_name", "uint32", "repeated"),
    21: ("tag_value", "uint32", "repeated"),
    22: ("timer_ru_utime", "float", "repeated"),
    23: ("timer_ru_stime", "float", "repeated"),
}

FDP = descriptor_pb2.FieldDescriptorProto
TYPES = {"string": FDP.TYPE_STRING, "uint32": FDP.TYPE_UINT32, "float": FDP.TYPE_FLOAT}
LABELS = {
    "required": FDP.LABEL_REQUIRED,
    "optional": FDP.LABEL_OPTIONAL,
    "repeated": FDP.LABEL_REPEATED,
}


def generated_descriptor():
    """The FileDescriptorProto embedded in pinba_pb2."""
    return descriptor_pb2.FileDescriptorProto.FromString(pinba_pb2.DESCRIPTOR.serialized_pb)


def default_json_name(name):
    """protoc's camelCase JSON name for a field (``ru_utime`` -> ``ruUtime``)."""
    parts = name.split("_")
    return parts[0] + "".join(part[:1].upper() + part[1:] for part in parts[1:])


def drop_default_json_names(file):
    """Clear json_name where it is the default: protoc writes it, generated modules omit it."""
    for message in file.message_type:
        for field in message.field:
            if field.json_name == default_json_name(field.name):
                field.ClearField("json_name")


def _grpc_tools_available():
    try:
        import grpc_tools.protoc  # noqa: F401
    except ImportError:
        return False
    return True


def protoc_command(compiler):
    if compiler == "protoc":
        path = shutil.which("protoc")
        if path is None:
            pytest.skip("protoc is not on PATH (Debian: protobuf-compiler)")
        return [path]
    if not _grpc_tools_available():
        pytest.skip("grpc_tools is not installed")
    return [sys.executable, "-m", "grpc_tools.protoc"]


@pytest.mark.parametrize("compiler", ["protoc", "grpc_tools"])
def test_generated_module_matches_the_proto_file(compiler, tmp_path):
    output = tmp_path / "pinba.desc"
    subprocess.run(
        [
            *protoc_command(compiler),
            f"--proto_path={PROTO.parent}",
            f"--descriptor_set_out={output}",
            PROTO.name,
        ],
        check=True,
        capture_output=True,
    )
    compiled = descriptor_pb2.FileDescriptorSet.FromString(output.read_bytes())
    assert len(compiled.file) == 1
    from_proto = compiled.file[0]
    from_module = generated_descriptor()
    for file in (from_proto, from_module):
        file.ClearField("source_code_info")
        drop_default_json_names(file)
    assert from_module == from_proto, (
        "tests/pinba_pb2.py is out of step with proto/pinba.proto: regenerate it"
    )


def test_generated_module_has_exactly_the_protocol_fields():
    file = generated_descriptor()
    assert file.package == "Pinba"
    assert file.syntax in ("", "proto2")
    assert [message.name for message in file.message_type] == ["Request"]
    found = {
        field.number: (
            field.name,
            "Request" if field.type == FDP.TYPE_MESSAGE else field.type,
            field.label,
        )
        for field in file.message_type[0].field
    }
    expected = {
        number: (name, "Request" if kind == "Request" else TYPES[kind], LABELS[label])
        for number, (name, kind, label) in PROTOCOL.items()
    }
    assert found == expected
    nested = [field for field in file.message_type[0].field if field.number == 18]
    assert nested[0].type_name == ".Pinba.Request"
    for field in file.message_type[0].field:
        # packed=true would change the wire form the encoders and servers agree on
        assert not field.options.packed, field.name
        assert not field.HasField("default_value"), field.name


FIELD_LINE = re.compile(r"^\s*(required|optional|repeated)\s+([\w.]+)\s+(\w+)\s*=\s*(\d+)\s*;")


def test_proto_file_has_exactly_the_protocol_fields():
    text = PROTO.read_text(encoding="utf-8")
    assert re.search(r'^syntax\s*=\s*"proto2"\s*;', text, re.MULTILINE)
    assert re.search(r"^package\s+Pinba\s*;", text, re.MULTILINE)
    assert re.findall(r"^\s*message\s+(\w+)", text, re.MULTILINE) == ["Request"]
    field_lines = [
        line for line in text.splitlines() if re.match(r"^\s*(required|optional|repeated)\b", line)
    ]
    found = {}
    for line in field_lines:
        match = FIELD_LINE.match(line)
        assert match, f"unexpected field declaration (options?): {line.strip()}"
        label, kind, name, number = match.groups()
        assert int(number) not in found, f"field number {number} declared twice"
        found[int(number)] = (name, kind, label)
    assert found == PROTOCOL
