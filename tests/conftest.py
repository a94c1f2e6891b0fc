import os

import pytest

from cli.main import read_settings, state_dir


@pytest.fixture(scope="session")
def base_settings():
    return read_settings(None, dict(os.environ))


@pytest.fixture(scope="session")
def stack(base_settings):
    """The real local stack (Kafka, Apicurio, Elasticsearch), started once if it is not running."""
    from infra.stack import LocalStack

    local = LocalStack(base_settings.stack, state_dir(base_settings, dict(os.environ)))
    local.up()
    return local
