"""The platform's queue-service messages (package `streaming`), declared from their field numbers
with protobuf's descriptor API, so tests decode what the runtime sends without the platform's
SDK (whose generated code wants an old protobuf)."""

from __future__ import annotations

from typing import Any


def queue_messages() -> dict[str, Any]:
    """DataFrameProto, DataFrameListProto and AttributesProto message classes."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="queueservice.proto", package="streaming", syntax="proto3"
    )

    def string_map(message, name: str, number: int) -> None:
        entry_name = name[0].upper() + name[1:] + "Entry"
        entry = message.nested_type.add(name=entry_name)
        entry.options.map_entry = True
        for key_name, key_number in (("key", 1), ("value", 2)):
            entry.field.add(
                name=key_name,
                number=key_number,
                type=field.TYPE_STRING,
                label=field.LABEL_OPTIONAL,
            )
        message.field.add(
            name=name,
            number=number,
            type=field.TYPE_MESSAGE,
            label=field.LABEL_REPEATED,
            type_name=f".streaming.{message.name}.{entry_name}",
        )

    frame = proto.message_type.add(name="DataFrameProto")
    frame.field.add(name="index", number=1, type=field.TYPE_UINT64, label=field.LABEL_OPTIONAL)
    string_map(frame, "tags", 2)
    frame.field.add(name="data", number=3, type=field.TYPE_BYTES, label=field.LABEL_OPTIONAL)
    frame.field.add(name="message", number=4, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    frames = proto.message_type.add(name="DataFrameListProto")
    frames.field.add(
        name="index",
        number=1,
        type=field.TYPE_MESSAGE,
        label=field.LABEL_REPEATED,
        type_name=".streaming.DataFrameProto",
    )
    attributes = proto.message_type.add(name="AttributesProto")
    string_map(attributes, "attributes", 1)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"streaming.{name}"))
        for name in ("DataFrameProto", "DataFrameListProto", "AttributesProto")
    }


async def claim_one(queue: Any) -> Any:
    """The next item a store hands out, or None: `claim()` with its default limit of one."""
    items = await queue.claim()
    assert len(items) <= 1
    return items[0] if items else None
