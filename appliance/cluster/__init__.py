"""The same stack over several hosts: an inventory from the answers' ``cluster`` section, each
host's units rendered from stacks/services.yaml (the one-host stack's command lines), and Ansible
(through ansible-runner) applying the roles in ``roles/`` on every host. See docs/cluster.md."""
