"""Virtual machine introspection: TLS secrets out of running QEMU/KVM guests, agentless."""
