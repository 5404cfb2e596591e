"""Provenance of a job's rows, claim leases on images, lossless paths, streamed scans.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03

- jobs: what produced the rows (model version, backend, detector settings and
  runtime as JSON text, package version), and whether the folder scan has
  finished (a job is done only after its scan is).
- images: who holds the image (claimed_by, a task or process id) and since
  when (claimed_at), so a claim is one conditional update with a lease; and
  path_raw, the file name's bytes when they are not UTF-8 (path then holds a
  readable form).
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:
        jobs.add_column(
            sa.Column("scan_done", sa.Boolean, nullable=False, server_default=sa.true())
        )
        jobs.add_column(sa.Column("model_version", sa.String(64)))
        jobs.add_column(sa.Column("backend", sa.String(32)))
        jobs.add_column(sa.Column("detector_settings", sa.Text))
        jobs.add_column(sa.Column("runtime", sa.Text))
        jobs.add_column(sa.Column("package_version", sa.String(32)))
    with op.batch_alter_table("images") as images:
        images.add_column(sa.Column("claimed_by", sa.String(64)))
        images.add_column(sa.Column("claimed_at", sa.DateTime(timezone=True)))
        images.add_column(sa.Column("path_raw", sa.LargeBinary))


def downgrade() -> None:
    with op.batch_alter_table("images") as images:
        images.drop_column("path_raw")
        images.drop_column("claimed_at")
        images.drop_column("claimed_by")
    with op.batch_alter_table("jobs") as jobs:
        for column in (
            "package_version",
            "runtime",
            "detector_settings",
            "backend",
            "model_version",
            "scan_done",
        ):
            jobs.drop_column(column)
