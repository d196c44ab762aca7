"""What crosses a service boundary: NATS subjects and the control messages sent on them.

Services import these modules and never each other's internals; events (persisted, folded) are
declared in `shared.events`.
"""
