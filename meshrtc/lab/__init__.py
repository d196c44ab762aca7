"""The failover lab (`meshrtc lab`): datacenters in network namespaces joined by emulated links.

topology (pure plan) → steps (pure commands) → netns (the ip/tc adapter); shaper + wire (link
emulation without sch_netem); state (JSON on disk); runner (up/down); links (cut/heal/degrade).
"""
