"""hostd: the host daemon — launches a VM-like process group, measures it, reports."""
