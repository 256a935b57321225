"""The declarative field tables (orchestrator/api/fields.py) through the server and drive resources."""

from __future__ import annotations

import pytest
from multidict import MultiDict
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from orchestrator.api.drives import DRIVE
from orchestrator.api.fields import Field, Int, Resource, Str
from orchestrator.api.servers import SERVER
from orchestrator.db.models import Base, Drive, Server, ServerDrive
from orchestrator.domain.errors import DomainError, Kind

DRIVE_UUID = "1a2b3c4d-0000-4000-8000-000000000001"
VLAN_UUID = "1a2b3c4d-0000-4000-8000-000000000002"
MINIMAL = {"name": "web", "cpu": 2000, "mem": 2**30, "vnc_password": "secret"}


def refusals(resource: Resource, body, *, create: bool = True) -> list[tuple[str | None, str]]:
    """(error point, message) of every refusal, in the table's order."""
    with pytest.raises(DomainError) as refused:
        resource.validate(body, create=create)
    assert {p.kind for p in refused.value.problems} == {Kind.INVALID}
    return [(p.point, p.message) for p in refused.value.problems]


# --- validate: servers -----------------------------------------------------------------------------


def test_a_minimal_server_gets_the_defaults():
    values = SERVER.validate(MINIMAL, create=True)
    assert values == {**MINIMAL, "smp": None, "cpu_type": "amd", "hypervisor": "kvm", "cpu_model": None,
                      "cpus_instead_of_cores": False, "enable_numa": False, "hv_relaxed": False, "hv_tsc": False,
                      "context": True, "drives": [], "nics": [], "meta": {}, "pubkeys": [], "requirements": [],
                      "auto_start": False, "allocation_pool": None, "is_grey": False, "gpus": [], "epcs": []}
    assert "tags" not in values  # no default: a create without tags leaves them to the handler


def test_every_missing_required_field_is_reported():
    assert refusals(SERVER, {}) == [(name, "This field is required") for name in ("name", "cpu", "mem", "vnc_password")]


def test_an_update_needs_nothing_and_gets_no_defaults():
    assert SERVER.validate({}, create=False) == {}
    assert SERVER.validate({"name": "renamed"}, create=False) == {"name": "renamed"}


def test_read_only_and_unknown_keys_are_ignored():
    body = {**MINIMAL, "status": "running", "uuid": "x", "runtime": {}, "owner": "someone", "colour": "blue"}
    assert SERVER.validate(body, create=False) == MINIMAL


def test_the_body_must_be_an_object():
    assert refusals(SERVER, [MINIMAL]) == [(None, "A JSON object is required")]


@pytest.mark.parametrize(("value", "parsed"), [(2000, 2000), ("2000", 2000), (" 2000 ", 2000), (2000.0, 2000)])
def test_integers_in_their_accepted_forms(value, parsed):
    assert SERVER.validate({**MINIMAL, "cpu": value}, create=True)["cpu"] == parsed


@pytest.mark.parametrize("value", [True, "2000 MHz", 2000.5, [2000], {"mhz": 2000}, "1e3"])
def test_integers_refused(value):
    assert refusals(SERVER, {**MINIMAL, "cpu": value}) == [("cpu", "An integer is required")]


def test_types_and_choices_are_each_reported_at_their_field():
    body = {**MINIMAL, "name": 7, "cpu_type": "arm", "context": "yes", "requirements": "fast",
            "vnc_password": "x" * 65}
    assert refusals(SERVER, body) == [
        ("name", "A string is required"),
        ("vnc_password", "Ensure this value has at most 64 characters"),
        ("cpu_type", "Select a valid choice. 'arm' is not one of the available choices: amd, intel"),
        ("context", "A boolean (true or false) is required"),
        ("requirements", "A list of strings is required"),
    ]


def test_null():
    assert refusals(SERVER, {**MINIMAL, "name": None}) == [("name", "This field may not be null")]
    values = SERVER.validate({**MINIMAL, "smp": None, "drives": None, "meta": None}, create=True)
    assert (values["smp"], values["drives"], values["meta"]) == (None, [], {})  # nullable, and empty lists/dicts


def test_nul_characters_are_refused():
    assert refusals(SERVER, {**MINIMAL, "name": "a\x00b"}) == [("name", "NUL characters are not allowed")]


def attachment(**changes):
    return {"drive": DRIVE_UUID, "device": "virtio", "dev_channel": "0:0", **changes}


@pytest.mark.parametrize("reference", [DRIVE_UUID, f"/api/2.0/drives/{DRIVE_UUID}/", {"uuid": DRIVE_UUID},
                                       {"resource_uri": f"/api/2.0/drives/{DRIVE_UUID}/"}, DRIVE_UUID.upper()])
def test_a_drive_attachment_in_every_reference_form(reference):
    values = SERVER.validate({**MINIMAL, "drives": [attachment(drive=reference)]}, create=True)
    assert values["drives"] == [{"boot_order": None, "dev_channel": "0:0", "device": "virtio", "drive": DRIVE_UUID}]


def test_nested_errors_point_into_the_list():
    drives = [attachment(), {"drive": DRIVE_UUID, "device": "floppy"}, attachment(boot_order=0), 5,
              attachment(drive="/api/2.0/vlans/x/")]
    assert refusals(SERVER, {**MINIMAL, "drives": drives}) == [
        ("drives.1.dev_channel", "This field is required"),
        ("drives.1.device", "Select a valid choice. 'floppy' is not one of the available choices: ide, virtio, scsi"),
    ]  # every fault of the first bad item, but that item stops the list: drives.2 to drives.4 are not looked at
    assert refusals(SERVER, {**MINIMAL, "drives": drives[2:], "cpu": "x"}) == [
        ("cpu", "An integer is required"), ("drives.0.boot_order", "Ensure this value is greater than or equal to 1")]


def test_a_non_object_in_a_list_points_at_its_index():
    assert refusals(SERVER, {**MINIMAL, "drives": [attachment(), 5]}) == [("drives.1", "An object is required")]
    assert refusals(SERVER, {**MINIMAL, "drives": attachment()}) == [("drives", "A list of objects is required")]
    assert refusals(SERVER, {**MINIMAL, "drives": [attachment(drive="/api/2.0/vlans/x/")]}) == [
        ("drives.0.drive", "'/api/2.0/vlans/x/' is not a drives URI")]


def test_nics_nest_two_levels():
    nics = [{"ip_v4_conf": {"conf": "dhcp"}, "model": "virtio"},
            {"ip_v4_conf": {"conf": "bogus"}, "vlan": "not-a-uuid"}]
    assert refusals(SERVER, {**MINIMAL, "nics": nics}) == [
        ("nics.1.ip_v4_conf.conf",
         "Select a valid choice. 'bogus' is not one of the available choices: dhcp, static, manual"),
        ("nics.1.vlan", "'not-a-uuid' is not a valid uuid"),
    ]
    values = SERVER.validate({**MINIMAL, "nics": [{"ip_v4_conf": {}, "vlan": VLAN_UUID}]}, create=True)
    assert values["nics"] == [{"boot_order": None, "ip_v4_conf": {"conf": "dhcp", "ip": None}, "ip_v6_conf": None,
                               "vlan": VLAN_UUID}]  # mac and model: absent, no default


# --- validate: drives ------------------------------------------------------------------------------


def test_a_minimal_drive():
    assert DRIVE.validate({"name": "disk", "size": "1024000000", "media": "disk"}, create=True) == {
        "name": "disk", "size": 1024000000, "media": "disk", "storage_type": None, "affinities": [],
        "allow_multimount": False, "iops": None, "meta": {}}


def test_drive_refusals():
    assert refusals(DRIVE, {"media": "tape", "size": 0, "affinities": ["hdd"], "meta": {"a": {"b": 1}}}) == [
        ("name", "This field is required"),
        ("size", "Ensure this value is greater than or equal to 1"),
        ("media", "Select a valid choice. 'tape' is not one of the available choices: cdrom, disk"),
        ("affinities", "Select a valid choice. 'hdd' is not one of the available choices"),
        ("meta", "Meta value of 'a' must be a string"),
    ]


def test_meta_scalars_become_strings():
    body = {"name": "d", "size": 1, "media": "cdrom", "meta": {"n": 3, "x": 1.5, "on": True, "s": "t"}}
    assert DRIVE.validate(body, create=True)["meta"] == {"n": "3", "x": "1.5", "on": "true", "s": "t"}
    assert refusals(DRIVE, {"meta": {"k" * 33: "v"}}, create=False) == [
        ("meta", f"Meta key {'k' * 33!r} is longer than 32 characters")]


# --- dump -----------------------------------------------------------------------------------------

OWNER = "1a2b3c4d-0000-4000-8000-0000000000aa"


def stored_server(status: str = "stopped") -> Server:
    row = Server(uuid="1a2b3c4d-0000-4000-8000-0000000000cc", owner_uuid=OWNER, name="web", cpu=2000, mem=2**30,
                 smp=1, vnc_password="secret", cpu_type="amd", hypervisor="kvm", cpu_model=None,
                 cpus_instead_of_cores=False, enable_numa=False, hv_relaxed=False, hv_tsc=False, context=True,
                 auto_start=False, is_grey=False, allocation_pool=None, meta={"a": "b"}, requirements=[], gpus=[],
                 epcs=[], pubkeys=[], status=status, active_since=None,
                 nics=[{"boot_order": None, "ip_v4_conf": None, "ip_v6_conf": None, "mac": "22:00:00:00:00:01",
                        "model": "virtio", "vlan": None}],
                 drive_links=[ServerDrive(drive_uuid=DRIVE_UUID, device="virtio", dev_channel="0:0", boot_order=1)])
    return row


def test_short_view_has_the_keys_of_spec_6_1():
    short = SERVER.dump(stored_server(), short=True)
    assert short == {"uuid": "1a2b3c4d-0000-4000-8000-0000000000cc",
                     "resource_uri": "/api/2.0/servers/1a2b3c4d-0000-4000-8000-0000000000cc/",
                     "owner": {"uuid": OWNER, "resource_uri": f"/api/2.0/user/{OWNER}/"},
                     "name": "web", "status": "stopped", "runtime": None}
    disk = Drive(uuid=DRIVE_UUID, owner_uuid=OWNER, name="disk", size=2**30, media="disk", status="unmounted")
    assert DRIVE.dump(disk, short=True) == {"uuid": DRIVE_UUID, "resource_uri": f"/api/2.0/drives/{DRIVE_UUID}/",
                                            "owner": {"uuid": OWNER, "resource_uri": f"/api/2.0/user/{OWNER}/"},
                                            "status": "unmounted"}


def test_full_view():
    full = SERVER.dump(stored_server())
    assert list(full) == [f.name for f in SERVER.fields]
    assert full["drives"] == [{"boot_order": 1, "dev_channel": "0:0", "device": "virtio", "runtime": None,
                               "drive": {"uuid": DRIVE_UUID, "resource_uri": f"/api/2.0/drives/{DRIVE_UUID}/"}}]
    assert full["nics"][0]["runtime"] is None
    assert (full["meta"], full["tags"], full["jobs"], full["grantees"]) == ({"a": "b"}, [], [], [])


def test_a_running_server_has_a_runtime():
    full = SERVER.dump(stored_server("running"))
    assert full["runtime"]["nics"][0]["mac"] == "22:00:00:00:00:01"
    assert full["drives"][0]["runtime"] == {"io": dict.fromkeys(
        ("bytes_read", "bytes_written", "count_flush", "count_read", "count_written", "total_time_ns_flush",
         "total_time_ns_read", "total_time_ns_write"), 0)}


def test_only_picks_from_either_view_and_ignores_unknown_names():
    assert SERVER.dump(stored_server(), only={"uuid", "cpu", "nonsense"}) == {
        "uuid": "1a2b3c4d-0000-4000-8000-0000000000cc", "cpu": 2000}
    assert SERVER.dump(stored_server(), short=True, only={"mem"}) == {"mem": 2**30}


# --- list_query against a store -------------------------------------------------------------------

NAMES = ["Web-1", "web-2", "db,primary", "db-replica", "100%", "a_b", "axb", "back\\slash"]


@pytest.fixture(scope="module")
def store():
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add_all(Server(uuid=f"00000000-0000-4000-8000-{i:012}", owner_uuid=OWNER, name=name, cpu=1000, mem=1,
                         smp=1, smp_auto=True, vnc_password="x", cpu_type="amd", hypervisor="kvm",
                         cpus_instead_of_cores=False, enable_numa=False, hv_relaxed=False, hv_tsc=False,
                         context=True, auto_start=False, is_grey=False, meta={}, requirements=[], nics=[], gpus=[],
                         epcs=[], pubkeys=[], status="running" if name.startswith("db") else "stopped")
                  for i, name in enumerate(NAMES))
        s.commit()
    yield engine
    engine.dispose()


def names(store, *params: tuple[str, str]) -> list[str]:
    query = MultiDict(params)
    lq = SERVER.list_query(query, query.getall)
    with Session(store) as s:
        return list(s.scalars(select(Server.name).where(*lq.where).order_by(*lq.order_by)))


def test_filters(store):
    assert names(store, ("name__contains", "WEB")) == ["Web-1", "web-2"]  # case-insensitive
    assert names(store, ("name__icontains", "web")) == ["Web-1", "web-2"]
    assert names(store, ("name__contains", "web,replica")) == ["Web-1", "web-2", "db-replica"]  # OR
    assert names(store, ("name__contains", "web"), ("name__contains", "2")) == ["web-2"]  # AND
    assert names(store, ("name__contains", "-"), ("status", "running")) == ["db-replica"]
    assert names(store, ("name", "Web-1,web-2")) == ["Web-1", "web-2"]
    assert names(store, ("name", "web-1")) == []  # exact is exact


def test_filter_values_are_literal(store):
    assert names(store, ("name", "db\\,primary")) == ["db,primary"]  # an escaped comma
    assert names(store, ("name__contains", "\\\\,db-")) == ["db-replica", "back\\slash"]  # \\, : a backslash, then OR
    assert names(store, ("name__contains", "%")) == ["100%"]
    assert names(store, ("name__contains", "_")) == ["a_b"]  # not a LIKE wildcard


def test_unknown_parameters_are_ignored(store):
    assert names(store, ("format", "json"), ("cpu", "1")) == NAMES


def test_order_by(store):
    assert names(store, ("order_by", "-name"), ("name__contains", "web")) == ["web-2", "Web-1"]
    with pytest.raises(DomainError) as refused:
        names(store, ("order_by", "cpu"))
    assert [(p.kind, p.point, p.message) for p in refused.value.problems] == [
        (Kind.INVALID, "order_by", "Cannot order by 'cpu'")]


def test_limit_offset_and_fields():
    def list_query(**params: str):
        query = MultiDict(params)
        return SERVER.list_query(query, query.getall)

    lq = list_query()
    assert (lq.limit, lq.offset, lq.fields) == (20, 0, None)
    lq = list_query(limit="0", offset="40", fields="uuid, status,")
    assert (lq.limit, lq.offset, lq.fields) == (0, 40, {"uuid", "status"})
    for name, bad in (("limit", "-1"), ("offset", "ten")):
        with pytest.raises(DomainError) as refused:
            list_query(**{name: bad})
        assert [(p.point, p.message) for p in refused.value.problems] == [
            (name, f"{name} must be a non-negative integer")]


# --- contradictions fail when a table is built ------------------------------------------------------


def test_required_with_a_default():
    with pytest.raises(AssertionError, match="x: required with default"):
        Field("x", Str(), required=True, default="")


def test_a_filter_or_ordering_needs_a_column():
    with pytest.raises(AssertionError, match="x: no column"):
        Field("x", Str(), lookups=("exact",))
    with pytest.raises(AssertionError, match="x: no column"):
        Field("x", Str(), orderable=True)


def test_a_resource_refuses_duplicate_fields_and_unknown_lookups():
    with pytest.raises(AssertionError, match="things: duplicate field"):
        Resource("things", fields=(Field("x", Str()), Field("x", Int())))
    with pytest.raises(AssertionError, match=r"things\.name: unknown lookup startswith"):
        Resource("things", fields=(Field("name", Str(), lookups=("startswith",), column=Server.name),))


def test_read_only_and_required():
    with pytest.raises(AssertionError):
        Field("x", Str(), readonly=True, required=True)
