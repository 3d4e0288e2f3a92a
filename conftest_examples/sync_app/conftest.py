import pytest
from chat_store import ChatStore


@pytest.fixture
def chat_store(threadcreator_db):
    """The sync service on this test's database (``sync_url``: the same database, a sync driver)."""
    store = ChatStore(threadcreator_db.sync_url)
    yield store
    store.close()
