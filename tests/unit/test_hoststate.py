"""Which iptables rules node mode may remove at stop: only its own, never the machine's or another runtime's."""

from __future__ import annotations

import pytest

from devstack.host.hoststate import RULE_COMMENT, is_node_rule


@pytest.mark.parametrize(
    ("rule", "ours"),
    [
        ("-N KUBE-SERVICES", True),
        ("-N CNI-FORWARD", False),  # the node makes no CNI chains (no masquerade, no portmap): another runtime's
        ("-N OK8S-ISOLATION", True),
        ('-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS', True),
        ("-A KUBE-SERVICES -d 198.19.0.1/32 -p tcp -j KUBE-SVC-NPX46M4PTMTKRN6Y", True),
        (f'-A FORWARD -s 198.18.0.0/15 ! -o ok8s0 -m comment --comment "{RULE_COMMENT}" -j DROP', True),
        ("-A FORWARD -i ok8s0 -j ACCEPT", True),
        ("-N DOCKER", False),
        ("-A FORWARD -o docker0 -j DOCKER", False),
        ('-A INPUT -p tcp -m multiport --dports 22 -m comment --comment "fail2ban" -j f2b-sshd', False),
        ("-A POSTROUTING -s 10.88.0.0/16 -j MASQUERADE", False),
        ("-P INPUT ACCEPT", False),
        ("-A INPUT -i ok8s01 -j ACCEPT", False),  # another interface whose name merely starts alike
    ],
)
def test_only_the_nodes_own_rules_are_ours(rule: str, ours: bool) -> None:
    assert is_node_rule(rule) is ours
