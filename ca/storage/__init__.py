"""Storage: SQLAlchemy 2.0 models, engines and Alembic migrations."""

from idmint.ca.storage.db import Database, migrate
from idmint.ca.storage.models import Authority, AuthorityKind, AuthorityState, Base

__all__ = ["Authority", "AuthorityKind", "AuthorityState", "Base", "Database", "migrate"]
