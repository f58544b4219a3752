"""The data connection: datasets and artifacts in S3 or a local folder, from the environment.

Every workload gets the same variables (docs/interfaces.md); ``DataConnection.from_env()`` turns
them into two stores (datasets, models) and the functions here read, write and list datasets.
"""

from appliance.dataconn.connection import DataConnection
from appliance.dataconn.datasets import (
    DatasetEntry,
    LoadedDataset,
    list_datasets,
    read_dataset,
    resolve,
    write_dataset,
)
from appliance.dataconn.errors import (
    ConnectionConfigError,
    DataConnectionError,
    DatasetFormatError,
    DatasetNotFoundError,
    StoreAccessError,
    StoreUnreachableError,
)

__all__ = [
    "ConnectionConfigError",
    "DataConnection",
    "DataConnectionError",
    "DatasetEntry",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "LoadedDataset",
    "StoreAccessError",
    "StoreUnreachableError",
    "list_datasets",
    "read_dataset",
    "resolve",
    "write_dataset",
]
