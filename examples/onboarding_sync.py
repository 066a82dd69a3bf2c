"""Onboard two users as transactions: the first commits, the second is rolled back.

Each user is created, given a storage quota, charged, and sent a welcome email. The
second user's card is declined, so the steps that already ran are undone by their
compensating actions, newest first. Run it with ``python examples/onboarding_sync.py``.
"""

from aumai_transactions.sync import TransactionManager


def create_user(action, data):
    print(f"  {action}: {data['user_id']}")
    return {"user_id": data["user_id"]}


def delete_user(action, data):
    print(f"  {action}: {data['user_id']}")


def reserve_quota(action, data):
    print(f"  {action}: {data['gb']} GB for {data['user_id']}")


def release_quota(action, data):
    print(f"  {action}: {data['gb']} GB for {data['user_id']}")


def charge_card(action, data):
    print(f"  {action}: ${data['amount']} on card {data['card']}")
    if data["card"].endswith("0002"):
        raise RuntimeError(f"card {data['card']} was declined")
    return {"charge_id": f"ch-{data['user_id']}"}


def refund_card(action, data):
    print(f"  {action}: ${data['amount']} on card {data['card']}")


def send_welcome_email(action, data):
    print(f"  {action}: {data['user_id']}")


# Where the manager journals every step before running it: a SQLite file next to
# where you run this, which survives a crash (and `aumai-transactions` can read).
STORE = "sqlite:///onboarding.db"

HANDLERS = {
    "create_user": create_user,
    "delete_user": delete_user,
    "reserve_quota": reserve_quota,
    "release_quota": release_quota,
    "charge_card": charge_card,
    "refund_card": refund_card,
    "send_welcome_email": send_welcome_email,
}


def onboard(manager, user_id, card):
    tx = manager.begin(timeout_seconds=60)
    manager.add_step(
        tx,
        agent_id="user_service",
        action="create_user",
        data={"user_id": user_id},
        compensating_action="delete_user",
    )
    manager.add_step(
        tx,
        agent_id="storage_agent",
        action="reserve_quota",
        data={"user_id": user_id, "gb": 10},
        compensating_action="release_quota",
    )
    manager.add_step(
        tx,
        agent_id="billing_agent",
        action="charge_card",
        data={"user_id": user_id, "card": card, "amount": 20},
        compensating_action="refund_card",
    )
    # An email cannot be unsent: no compensating action, so it goes last.
    manager.add_step(
        tx,
        agent_id="mail_agent",
        action="send_welcome_email",
        data={"user_id": user_id},
    )
    result = manager.commit(tx)

    action_of = {step.step_id: step.action for step in tx.steps}
    print(f"state:           {result.state.value}")
    print(f"completed_steps: {[action_of[step_id] for step_id in result.completed_steps]}")
    print(f"failed_step:     {action_of.get(result.failed_step)}")
    print(f"error:           {result.error}")
    return result


def main():
    with TransactionManager(action_handlers=HANDLERS, store=STORE) as manager:
        print("Onboarding u-001")
        onboard(manager, "u-001", card="4242-4242-4242-4242")
        print()
        print("Onboarding u-002")
        onboard(manager, "u-002", card="4000-0000-0000-0002")


if __name__ == "__main__":
    main()
