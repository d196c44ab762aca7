"""ConsumerSettings: one frozen description of a durable pull consumer, shared by every variant."""

from __future__ import annotations

import dataclasses

import pytest
from nats.js.api import AckPolicy, DeliverPolicy

from services.billing.consumer import BATCH_CONSUMER
from shared.bus_consumer import ConsumerSettings


def test_defaults_are_the_event_consumers() -> None:
    settings = ConsumerSettings()
    assert (settings.batch, settings.ack_wait, settings.max_deliver, settings.max_ack_pending,
            settings.deliver_policy, settings.fetch_timeout) == (64, 30.0, -1, None, DeliverPolicy.ALL, 5.0)


def test_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ConsumerSettings().batch = 2  # type: ignore[misc]


def test_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="batch"):
        ConsumerSettings(batch=0)


def test_server_config() -> None:
    config = ConsumerSettings(ack_wait=15.0, max_ack_pending=1, deliver_policy=DeliverPolicy.NEW).consumer_config(
        "billing-dc1", "usage.dc1.sample.>")
    assert (config.name, config.durable_name, config.ack_policy, config.ack_wait, config.max_deliver,
            config.max_ack_pending, config.deliver_policy, config.filter_subject) == (
        "billing-dc1", "billing-dc1", AckPolicy.EXPLICIT, 15.0, -1, 1, DeliverPolicy.NEW, "usage.dc1.sample.>")
    assert ConsumerSettings().consumer_config("d", None).max_ack_pending is None  # left to the server


def test_nak_delay_doubles_per_delivery_up_to_the_cap() -> None:
    settings = ConsumerSettings(nak_base_delay=0.5, nak_max_delay=3.0)
    assert [settings.nak_delay(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_billing_batches_are_big_and_retried_after_a_fixed_second() -> None:
    assert (BATCH_CONSUMER.batch, BATCH_CONSUMER.ack_wait, BATCH_CONSUMER.max_ack_pending,
            BATCH_CONSUMER.fetch_timeout) == (1000, 15.0, 20_000, 1.0)
    assert {BATCH_CONSUMER.nak_delay(n) for n in range(1, 10)} == {1.0}
