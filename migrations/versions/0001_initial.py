"""Initial schema: jobs, images, faces.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_LANDMARK_COLUMNS = [
    f"{name}_{axis}"
    for name in ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
    for axis in ("x", "y")
]


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("root", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("image_count", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "images",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "job_id", sa.Integer, sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64)),
        sa.Column("width", sa.Integer),
        sa.Column("height", sa.Integer),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_code", sa.String(32)),
        sa.Column("error", sa.Text),
        sa.Column("face_count", sa.Integer),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("job_id", "path", name="uq_images_job_path"),
    )
    op.create_index("ix_images_job_status", "images", ["job_id", "status"])
    op.create_table(
        "faces",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "job_id", sa.Integer, sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "image_id",
            sa.Integer,
            sa.ForeignKey("images.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("face_index", sa.Integer, nullable=False),
        *[sa.Column(name, sa.Float, nullable=False) for name in ("x", "y", "w", "h")],
        sa.Column("det_confidence", sa.Float, nullable=False),
        *[sa.Column(name, sa.Float, nullable=False) for name in _LANDMARK_COLUMNS],
        sa.Column("gender", sa.String(8), nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.UniqueConstraint("image_id", "face_index", name="uq_faces_image_index"),
    )
    op.create_index("ix_faces_job_gender", "faces", ["job_id", "gender", "confidence"])
    op.create_index("ix_faces_image", "faces", ["image_id"])


def downgrade() -> None:
    op.drop_table("faces")
    op.drop_table("images")
    op.drop_table("jobs")
