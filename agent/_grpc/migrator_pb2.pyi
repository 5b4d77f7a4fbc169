from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class IngestFileResult(_message.Message):
    __slots__ = ("source_path", "dest_path", "error")
    SOURCE_PATH_FIELD_NUMBER: _ClassVar[int]
    DEST_PATH_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    source_path: str
    dest_path: str
    error: str
    def __init__(self, source_path: _Optional[str] = ..., dest_path: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class IngestFileCopy(_message.Message):
    __slots__ = ("source_path", "dest_path")
    SOURCE_PATH_FIELD_NUMBER: _ClassVar[int]
    DEST_PATH_FIELD_NUMBER: _ClassVar[int]
    source_path: str
    dest_path: str
    def __init__(self, source_path: _Optional[str] = ..., dest_path: _Optional[str] = ...) -> None: ...

class ExportRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExportResponse(_message.Message):
    __slots__ = ("paths",)
    PATHS_FIELD_NUMBER: _ClassVar[int]
    paths: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, paths: _Optional[_Iterable[str]] = ...) -> None: ...
