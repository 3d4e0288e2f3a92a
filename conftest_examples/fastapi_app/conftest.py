"""The app on the test database: its dependency overridden with an engine on ``threadcreator_db.url``.

A dependency override, not ``threadcreator_env``: a FastAPI app builds its engine lazily behind a
dependency, and overriding dependencies is how FastAPI documents testing. It also lets the
engine keep its connection pool: the engine is made in the test's own event loop and disposed
when the test ends, so no pooled async connection outlives the loop that opened it.
"""

import httpx
import pytest_asyncio
from chat_api import app, get_sessions
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine


@pytest_asyncio.fixture
async def app_engine(threadcreator_db):
    """The app's engine, as production would build it, on this test's database."""
    engine = create_async_engine(threadcreator_db.url)
    app.dependency_overrides[get_sessions] = lambda: async_sessionmaker(engine)
    yield engine
    app.dependency_overrides.pop(get_sessions)
    await engine.dispose()


@pytest_asyncio.fixture
async def client(app_engine):
    """An HTTP client calling the app in-process; the app's exceptions propagate to the test."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


@pytest_asyncio.fixture
async def client_seeing_500s(app_engine):
    """An HTTP client that gets the 500 response a real client would, instead of the exception."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client
