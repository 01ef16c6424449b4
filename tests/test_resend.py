"""An agent's unanswered update: sent again until a Receipt or Reject names it, at most a few times."""

from fedge.edge_agent.resend import Resender
from fedge.wire import AdapterUpdate


def _update(round_number: int) -> AdapterUpdate:
    return AdapterUpdate("run", round_number, "a1", 10, {}, {})


def test_an_unanswered_update_is_due_again_until_answered_or_given_up():
    resender = Resender(wait_s=0.0, max_resends=2)
    assert resender.due() is None  # nothing sent yet
    update = _update(3)
    resender.sent(update)
    assert resender.due() is update and resender.due() is update  # every time its wait is over...
    assert resender.due() is None and resender.waiting is None  # ...at most max_resends times


def test_a_receipt_or_reject_naming_it_or_newer_work_ends_the_wait():
    resender = Resender(wait_s=0.0)
    update = _update(3)
    resender.sent(update)
    assert not resender.answered("someone-else") and resender.waiting is update
    assert resender.answered(update.message_id) and resender.due() is None
    resender.sent(update)
    resender.forget_before(3)
    assert resender.waiting is update  # work for the same round: still waiting
    resender.forget_before(4)
    assert resender.waiting is None


def test_the_wait_doubles_after_each_resend():
    resender = Resender(wait_s=3600.0)
    resender.sent(_update(1))
    assert resender.due() is None  # an hour has not passed
