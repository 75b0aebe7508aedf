#!/usr/bin/env python3
"""Renders SEAPATH's generic guest template into the fixtures beside this script.

guest.xml.j2 is a verbatim copy of templates/vm/guest.xml.j2 of SEAPATH's Ansible repository
(seapath/ansible, Apache-2.0, commit be5cf99a4ddcb32d67a04da565c2b9a9225303cd). Each variant
below turns on one feature of the template the way an inventory would (see
examples/inventories/vms_inventory_example.yaml there); `all` turns them all on at once.
The tests in src/domain_xml/seapath_tests.rs read the rendered files; this script only
regenerates them (python3 with jinja2): python3 render.py
"""

import pathlib

import jinja2

HERE = pathlib.Path(__file__).resolve().parent
UUID = "8d9e7c38-4b4e-4b8f-9a63-2f3c9d0b6a51"
MAC = "52:54:00:aa:bb:{:02x}"

VARIANTS = {
    "minimal": ({}, False),
    "rt": ({"vm_features": ["rt"], "cpuset": [2, 3]}, True),
    "isolated": ({"vm_features": ["isolated"], "cpuset": [4, 5], "emulatorpin": "0"}, True),
    "dpdk": ({"vm_features": ["dpdk"], "nb_cpu": 2,
              "dpdk": [{"ovs_port": "guest0p0", "mac_address": MAC.format(1)}]}, False),
    "ovs": ({"ovs": [{"ovs_port": "tap-guest0", "mac_address": MAC.format(2),
                      "rx_queue_size": 1024}]}, False),
    "bridges": ({"bridges": [{"name": "br0", "mac_address": MAC.format(3), "type": "openvswitch",
                              "vlan": {"vlan_tag": 100}, "rx_queue_size": 1024}]}, False),
    "direct": ({"direct_interfaces": [{"source": "enp3s0", "mode": "bridge",
                                       "mac_address": MAC.format(4),
                                       "trustGuestRxFilters": True}]}, False),
    "sriov": ({"sriov": ["sriov-net0"]}, False),
    "pci": ({"pci_passthrough": [{"domain": "0x0000", "bus": "0x3b", "slot": "0x00",
                                  "function": "0x1"}]}, False),
    "graphic-console": ({"vm_features": ["graphic-console"]}, False),
    "memballoon": ({"vm_features": ["memballoon"]}, False),
}
VARIANTS["all"] = (
    {
        "vm_features": ["rt", "isolated", "dpdk", "graphic-console", "memballoon"],
        "cpuset": [2, 3],
        "emulatorpin": "0",
        **{key: value for name in ("dpdk", "ovs", "bridges", "direct", "sriov", "pci")
           for key, value in VARIANTS[name][0].items() if key not in ("vm_features", "nb_cpu")},
    },
    True,
)


def main():
    # Ansible's template module renders with trim_blocks. Its filters (random on a number, to_uuid,
    # bool) are stubbed: their values are
    # only used without vm.uuid or with standalone disks, which no variant has.
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE), trim_blocks=True,
                             keep_trailing_newline=True)
    env.filters["to_uuid"] = lambda value: UUID
    env.filters["bool"] = bool
    env.filters["random"] = lambda value: value
    template = env.get_template("guest.xml.j2")
    for name, (features, with_cpumachines) in VARIANTS.items():
        vm = {"inventory_hostname": "guest0", "uuid": UUID, **features}
        context = {"vm": vm}
        if with_cpumachines:
            context["cpumachines"] = True
        xml = template.render(**context)
        header = (f"<!-- Rendered from SEAPATH's guest template (seapath/ansible, "
                  f"templates/vm/guest.xml.j2) by render.py, variant {name}: do not edit. -->\n")
        (HERE / f"guest-{name}.xml").write_text(header + xml)


if __name__ == "__main__":
    main()
