"""Nothing listens beyond loopback unless asked: the embedded Dask cluster (scheduler,
workers, dashboards) of a default run binds to 127.0.0.1 only."""

from __future__ import annotations

import ipaddress

import psutil
import pytest

from pipeline.config import DaskConfig
from pipeline.segment.executor import dask_client


def _listening(pids: set[int]) -> list[str]:
    return [c.laddr.ip for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids]


@pytest.mark.parametrize("cfg", [DaskConfig(), DaskConfig(workers=2, processes=True)],
                         ids=["in-process worker (default)", "two worker processes"])
def test_the_embedded_cluster_listens_on_loopback_only(cfg):
    me = psutil.Process()
    with dask_client(cfg) as client:
        assert client.submit(sum, [1, 2]).result() == 3
        pids = {me.pid, *(p.pid for p in me.children(recursive=True))}
        addresses = _listening(pids)
    assert addresses, "the dashboard at least should listen"
    assert all(ipaddress.ip_address(a).is_loopback for a in addresses), addresses
