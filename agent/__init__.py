"""The idmint node agent: attests to the server, keeps SVIDs for the entries
parented to it, and serves the SPIFFE Workload API on a Unix socket."""
