"""The FastAPI app under load, under faults and per user, checked by the plugin.

Copy this folder and run ``pytest``: requests go through ``httpx.ASGITransport`` into the app,
which writes with its own engine on the test database; the plugin's fault injector, integrity
check and isolation check reach that engine with nothing to call.
"""

import pytest

from pytest_threadcreator import InjectedFault

pytestmark = pytest.mark.asyncio


def as_user(user):
    return {"X-User-Id": user.user_id}


async def test_a_hundred_concurrent_creates_all_succeed(
    client, make_user_context, run_concurrently, threadcreator_db
):
    users = make_user_context.many(100)
    report = await run_concurrently(
        lambda user: client.post("/threads", json={"message": "Hi"}, headers=as_user(user)),
        users,
    )

    report.raise_errors()
    assert [response.status_code for response in report.results] == [201] * 100
    assert await threadcreator_db.count_threads() == 100
    await threadcreator_db.check_integrity()


async def test_a_failed_write_answers_500_and_keeps_nothing(
    client_seeing_500s, user_context, fault_injector, threadcreator_db
):
    rule = fault_injector.fail("message_insert", times=1)

    response = await client_seeing_500s.post(
        "/threads", json={"message": "Hi"}, headers=as_user(user_context)
    )

    assert response.status_code == 500
    assert rule.fired == 1
    assert await threadcreator_db.count_threads() == 0  # the thread insert was rolled back
    assert await threadcreator_db.count_messages() == 0


async def test_a_failed_write_raises_in_the_test_with_the_default_transport(
    client, user_context, fault_injector, threadcreator_db
):
    fault_injector.fail("commit", times=1)

    with pytest.raises(InjectedFault):
        await client.post("/threads", json={"message": "Hi"}, headers=as_user(user_context))

    assert await threadcreator_db.count_threads() == 0


async def test_get_threads_shows_each_user_only_their_own(
    client, make_user_context, threadcreator_db
):
    users = make_user_context.many(4)
    for user in users:
        for title in ("first", "second"):
            response = await client.post(
                "/threads", json={"message": "Hi", "title": title}, headers=as_user(user)
            )
            assert response.status_code == 201

    async def shown_to(user):
        response = await client.get("/threads", headers=as_user(user))
        assert response.status_code == 200
        return response.json()  # [{"id": ..., "title": ...}, ...]

    await threadcreator_db.assert_user_isolation(users, read=shown_to)


async def test_a_request_without_a_user_is_refused(client, threadcreator_db):
    response = await client.post("/threads", json={"message": "Hi"})

    assert response.status_code == 422
    assert await threadcreator_db.count_threads() == 0
