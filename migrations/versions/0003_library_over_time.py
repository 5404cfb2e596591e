"""A photo library over time: unsure answers, rows of several models, reuse by content.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03

- faces: `unsure` (confidence under the threshold, or a face too small to
  judge) and the raw `p_female`; a face may now have rows from several model
  versions (re-classification), so the unique key gains model_version.
- jobs: the unsure thresholds in force (`unsure_below`, `min_eye_distance`).
- indexes: images by content hash (reuse), faces by (confidence, id) for the
  results browser's keyset pages, lowest confidence first.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("faces") as faces:
        faces.add_column(sa.Column("unsure", sa.Boolean, nullable=False, server_default=sa.false()))
        faces.add_column(sa.Column("p_female", sa.Float))
        faces.drop_constraint("uq_faces_image_index", type_="unique")
        faces.create_unique_constraint(
            "uq_faces_image_model_index", ["image_id", "model_version", "face_index"]
        )
    with op.batch_alter_table("jobs") as jobs:
        jobs.add_column(sa.Column("unsure_below", sa.Float))
        jobs.add_column(sa.Column("min_eye_distance", sa.Float))
    op.create_index("ix_images_sha256", "images", ["sha256"])
    op.create_index("ix_faces_confidence", "faces", ["confidence", "id"])


def downgrade() -> None:
    op.drop_index("ix_faces_confidence", "faces")
    op.drop_index("ix_images_sha256", "images")
    with op.batch_alter_table("jobs") as jobs:
        jobs.drop_column("min_eye_distance")
        jobs.drop_column("unsure_below")
    with op.batch_alter_table("faces") as faces:
        faces.drop_constraint("uq_faces_image_model_index", type_="unique")
        faces.create_unique_constraint("uq_faces_image_index", ["image_id", "face_index"])
        faces.drop_column("p_female")
        faces.drop_column("unsure")
