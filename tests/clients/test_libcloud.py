"""Apache libcloud's CloudSigma 2.0 driver (from PyPI, unchanged) over HTTPS, trusting the node's
self-signed certificate: sizes, images, a node from a library drive, start, stop, attach, clone, destroy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.clients.conftest import EMAIL, PASSWORD, Node
from tests.strato_process import wait_for


@pytest.fixture
def driver(node: Node) -> Iterator[object]:
    import libcloud.security
    from libcloud.compute.drivers.cloudsigma import CloudSigma_2_0_NodeDriver

    previous = libcloud.security.CA_CERTS_PATH
    libcloud.security.CA_CERTS_PATH = str(node.cert)  # trust the node's self-signed certificate
    driver = CloudSigma_2_0_NodeDriver(EMAIL, PASSWORD, host="127.0.0.1", port=node.tls_port)
    driver.DRIVE_TRANSITION_SLEEP_INTERVAL = 0.5  # an instance setting: it polls every 5 s by default
    yield driver
    libcloud.security.CA_CERTS_PATH = previous


def test_node_lifecycle(driver, node: Node) -> None:  # type: ignore[no-untyped-def]
    from libcloud.compute.drivers.cloudsigma import CloudSigmaNodeSize
    from libcloud.compute.types import NodeState

    assert driver.connection.secure and driver.connection.port == node.tls_port
    assert driver.list_sizes()
    images = driver.list_images()
    image = next(i for i in images if i.id == node.library_disk)
    assert image.extra["image_type"] == "preinst"
    size = CloudSigmaNodeSize(id="tiny", name="tiny", cpu=1, ram=128, disk=1, bandwidth=None, price=0,  # 2000 MHz
                              driver=driver)
    created = driver.create_node(name="lc-node", size=size, image=image, ex_vnc_password="secret")
    wait_for(lambda: driver.ex_get_node(created.id).state == NodeState.RUNNING)
    node_drive = created.extra["drives"][0]["drive"]["uuid"]
    assert driver.ex_get_drive(node_drive).size == 1  # GiB: cloned, then resized to size.disk
    assert driver.ex_stop_node(created)
    wait_for(lambda: driver.ex_get_node(created.id).state == NodeState.STOPPED)
    extra = driver.ex_create_drive(name="lc-extra", size=1)  # GiB
    wait_for(lambda: driver.ex_get_drive(extra.id).status == "unmounted")
    assert driver.ex_attach_drive(node=driver.ex_get_node(created.id), drive=extra)
    attached = driver.ex_get_node(created.id, return_json=True)
    assert extra.id in {d["drive"]["uuid"] for d in attached["drives"]}
    copy = driver.ex_clone_drive(drive=extra, name="lc-extra-copy")
    wait_for(lambda: driver.ex_get_drive(copy.id).status == "unmounted")
    twin = driver.ex_clone_node(node=driver.ex_get_node(created.id), name="lc-twin")
    assert twin.name == "lc-twin"
    wait_for(lambda: all(driver.ex_get_drive(d["drive"]["uuid"]).status == "mounted"
                         for d in driver.ex_get_node(twin.id, return_json=True)["drives"]))
    assert driver.destroy_node(twin, ex_delete_drives=True)
    assert driver.destroy_node(driver.ex_get_node(created.id), ex_delete_drives=True)
    assert driver.ex_destroy_drive(copy)
    wait_for(lambda: created.id not in {n.id for n in driver.list_nodes()})
