"""botocore's model of an ``aws s3api`` command: its operation, the input members it takes, its
output and its paginator.

botocore's S3 service model is the single source of truth, as it is for the aws CLI itself: an
operation's input shape gives the options (``--`` + ``xform_name(member, "-")``, in member order,
typed by the member's shape, required members as in the model), its output shape the output, and
the paginator model (``paginators-1``) auto-pagination. Nothing is written out per option or per
output field.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botocore import xform_name
from botocore.exceptions import DataNotFoundError
from botocore.loaders import Loader
from botocore.model import OperationModel, Shape, StructureShape
from google.protobuf.message import Message

from gateway import convert


@dataclass(frozen=True)
class Command:
    """One ``aws s3api`` command: its S3 operation (also the RPC's name) and request message."""

    operation: str
    request: type[Message]

    @property
    def name(self) -> str:
        return str(xform_name(self.operation, "-"))

    @property
    def model(self) -> OperationModel:
        return convert.service_model().operation_model(self.operation)

    @property
    def input_shape(self) -> StructureShape:
        shape = self.model.input_shape
        assert shape is not None
        return shape

    @property
    def output_shape(self) -> StructureShape:
        shape = self.model.output_shape
        assert shape is not None
        return shape

    @property
    def members(self) -> dict[str, Shape]:
        """The input members the command accepts: those with a proto field, and the streamed
        body."""
        return {
            name: shape
            for name, shape in self.input_shape.members.items()
            if convert.field_of(self.request, name) is not None or is_streaming(shape)
        }

    @property
    def paginator(self) -> Mapping[str, Any] | None:
        """botocore's pagination config of the command, None when it does not paginate."""
        return _paginators().get(self.operation)


def is_streaming(shape: Shape) -> bool:
    """Whether the member is a streamed body (upload-part's ``--body``)."""
    return shape.type_name == "blob" and bool(shape.serialization.get("streaming"))


@functools.cache
def _paginators() -> Mapping[str, Any]:
    try:
        model = Loader().load_service_model("s3", "paginators-1")
    except DataNotFoundError:
        return {}
    pagination: Mapping[str, Any] = model["pagination"]
    return pagination
