"""Baseline: every table of the store (scores, audit, outcomes, token uses, CDS cards and
feedback, the work queue, census and outreach, monitoring history, alerts).

A database made before migrations existed (each module created its own tables on first use)
already holds some of these tables: each is created only if missing, so such a store is brought
to this revision without touching its rows.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())

    def exists(table: str) -> bool:
        return table in existing

    if not exists("alert_events"):
        op.create_table(
            "alert_events",
            sa.Column(
                "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
            ),
            sa.Column("name", sa.String(length=200), nullable=False),
            sa.Column("status", sa.String(length=16), nullable=False),
            sa.Column("severity", sa.String(length=32), nullable=True),
            sa.Column("task", sa.String(length=64), nullable=True),
            sa.Column("fingerprint", sa.String(length=64), nullable=False),
            sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("ends_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("last_received_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("receiver", sa.String(length=200), nullable=False),
            sa.Column("labels", sa.JSON(), nullable=False),
            sa.Column("annotations", sa.JSON(), nullable=False),
            sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_events")),
            sa.UniqueConstraint(
                "fingerprint",
                "status",
                "starts_at",
                name=op.f("uq_alert_events_fingerprint_status_starts_at"),
            ),
        )
        op.create_index(
            op.f("ix_alert_events_status_last_received_at"),
            "alert_events",
            ["status", "last_received_at"],
            unique=False,
        )
    if not exists("audit_log"):
        op.create_table(
            "audit_log",
            sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
            sa.Column("time", sa.DateTime(timezone=True), nullable=False),
            sa.Column("request_id", sa.String(length=64), nullable=True),
            sa.Column("actor", sa.String(length=128), nullable=True),
            sa.Column("role", sa.String(length=64), nullable=True),
            sa.Column("action", sa.String(length=64), nullable=False),
            sa.Column("endpoint", sa.String(length=256), nullable=True),
            sa.Column("resource_type", sa.String(length=64), nullable=True),
            sa.Column("resource_ids", sa.JSON(none_as_null=True), nullable=True),
            sa.Column("outcome", sa.String(length=64), nullable=False),
            sa.Column("http_status", sa.Integer(), nullable=True),
            sa.Column("latency_ms", sa.Float(), nullable=True),
            sa.Column("detail", sa.String(length=500), nullable=True),
            sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
        )
        op.create_index(op.f("ix_audit_log_action_time"), "audit_log", ["action", "time"], unique=False)
        op.create_index(op.f("ix_audit_log_request_id"), "audit_log", ["request_id"], unique=False)
        op.create_index(op.f("ix_audit_log_time"), "audit_log", ["time"], unique=False)
    if not exists("cds_cards"):
        op.create_table(
            "cds_cards",
            sa.Column("uuid", sa.String(length=36), nullable=False),
            sa.Column("service_id", sa.String(length=64), nullable=False),
            sa.Column("hook_instance", sa.String(length=36), nullable=False),
            sa.Column("patient_id", sa.String(length=64), nullable=False),
            sa.Column("encounter_id", sa.String(length=64), nullable=True),
            sa.Column("indicator", sa.String(length=16), nullable=False),
            sa.Column("model_version", sa.String(length=64), nullable=True),
            sa.Column("basis", sa.JSON(), nullable=False),
            sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("uuid", name=op.f("pk_cds_cards")),
        )
        op.create_index(op.f("ix_cds_cards_issued_at"), "cds_cards", ["issued_at"], unique=False)
        op.create_index(op.f("ix_cds_cards_service_id"), "cds_cards", ["service_id"], unique=False)
    if not exists("cds_feedback"):
        op.create_table(
            "cds_feedback",
            sa.Column(
                "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
            ),
            sa.Column("card_uuid", sa.String(length=36), nullable=False),
            sa.Column("service_id", sa.String(length=64), nullable=False),
            sa.Column("outcome", sa.String(length=16), nullable=False),
            sa.Column("override_reason_code", sa.String(length=64), nullable=True),
            sa.Column("outcome_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("client", sa.String(length=256), nullable=True),
            sa.PrimaryKeyConstraint("id", name=op.f("pk_cds_feedback")),
            sa.UniqueConstraint(
                "card_uuid",
                "outcome",
                "outcome_at",
                name=op.f("uq_cds_feedback_card_uuid_outcome_outcome_at"),
            ),
        )
        op.create_index(op.f("ix_cds_feedback_card_uuid"), "cds_feedback", ["card_uuid"], unique=False)
        op.create_index(op.f("ix_cds_feedback_received_at"), "cds_feedback", ["received_at"], unique=False)
    if not exists("monitoring_drift_runs"):
        op.create_table(
            "monitoring_drift_runs",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
            sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
            sa.Column("window_by", sa.String(length=16), nullable=False),
            sa.Column("model_version", sa.String(length=128), nullable=True),
            sa.Column("n_current", sa.Integer(), nullable=False),
            sa.Column("n_reference", sa.Integer(), nullable=False),
            sa.Column("detected", sa.Boolean(), nullable=False),
            sa.Column("checks", sa.JSON(none_as_null=True), nullable=False),
            sa.Column("features", sa.JSON(none_as_null=True), nullable=False),
            sa.Column("report_dir", sa.String(length=500), nullable=True),
            sa.Column("duration_s", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        )
        op.create_index(
            op.f("ix_monitoring_drift_runs_checked_at"), "monitoring_drift_runs", ["checked_at"], unique=False
        )
    if not exists("monitoring_loop_events"):
        op.create_table(
            "monitoring_loop_events",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("time", sa.DateTime(timezone=True), nullable=False),
            sa.Column("cycle", sa.String(length=64), nullable=False),
            sa.Column("step", sa.String(length=32), nullable=False),
            sa.Column("champion", sa.String(length=128), nullable=True),
            sa.Column("candidate", sa.String(length=128), nullable=True),
            sa.Column("outcome", sa.String(length=32), nullable=False),
            sa.Column("detail", sa.JSON(none_as_null=True), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        )
        op.create_index(
            op.f("ix_monitoring_loop_events_cycle"), "monitoring_loop_events", ["cycle"], unique=False
        )
        op.create_index(
            op.f("ix_monitoring_loop_events_time"), "monitoring_loop_events", ["time"], unique=False
        )
    if not exists("monitoring_performance"):
        op.create_table(
            "monitoring_performance",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
            sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
            sa.Column("model_version", sa.String(length=128), nullable=True),
            sa.Column("task", sa.String(length=32), nullable=False),
            sa.Column("n", sa.Integer(), nullable=False),
            sa.Column("auroc", sa.Float(), nullable=True),
            sa.Column("auroc_low", sa.Float(), nullable=True),
            sa.Column("auroc_high", sa.Float(), nullable=True),
            sa.Column("ece", sa.Float(), nullable=True),
            sa.Column("report_dir", sa.String(length=500), nullable=True),
            sa.PrimaryKeyConstraint("id"),
        )
        op.create_index(
            op.f("ix_monitoring_performance_computed_at"),
            "monitoring_performance",
            ["computed_at"],
            unique=False,
        )
    if not exists("outcomes"):
        op.create_table(
            "outcomes",
            sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
            sa.Column("patient_id", sa.String(length=64), nullable=True),
            sa.Column("encounter_id", sa.String(length=64), nullable=False),
            sa.Column("task", sa.String(length=32), nullable=False),
            sa.Column("label", sa.Integer(), nullable=False),
            sa.Column("observed_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("source", sa.String(length=64), nullable=True),
            sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("id", name=op.f("pk_outcomes")),
            sa.UniqueConstraint("encounter_id", "task", name=op.f("uq_outcomes_encounter_id_task")),
        )
        op.create_index(op.f("ix_outcomes_patient_id"), "outcomes", ["patient_id"], unique=False)
        op.create_index(op.f("ix_outcomes_recorded_at"), "outcomes", ["recorded_at"], unique=False)
        op.create_index(
            op.f("ix_outcomes_task_observed_at"), "outcomes", ["task", "observed_at"], unique=False
        )
    if not exists("scored_notes"):
        op.create_table(
            "scored_notes",
            sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
            sa.Column("request_id", sa.String(length=64), nullable=False),
            sa.Column("idempotency_key", sa.String(length=320), nullable=False),
            sa.Column("resource_type", sa.String(length=64), nullable=False),
            sa.Column("resource_id", sa.String(length=64), nullable=True),
            sa.Column("version_id", sa.String(length=64), nullable=True),
            sa.Column("text_sha256", sa.String(length=64), nullable=False),
            sa.Column("note_type", sa.String(length=64), nullable=True),
            sa.Column("patient_id", sa.String(length=64), nullable=True),
            sa.Column("encounter_id", sa.String(length=64), nullable=True),
            sa.Column("note_date", sa.DateTime(timezone=True), nullable=True),
            sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("model_name", sa.String(length=128), nullable=False),
            sa.Column("model_version", sa.String(length=128), nullable=False),
            sa.Column("model_kind", sa.String(length=32), nullable=False),
            sa.Column("shadow", sa.Boolean(), nullable=False),
            sa.Column("source", sa.String(length=32), nullable=False),
            sa.Column("note_tokens", sa.Integer(), nullable=False),
            sa.Column("truncated", sa.Boolean(), nullable=False),
            sa.Column("latency_ms", sa.Float(), nullable=False),
            sa.Column("response_json", sa.JSON(none_as_null=True), nullable=True),
            sa.PrimaryKeyConstraint("id", name=op.f("pk_scored_notes")),
            sa.UniqueConstraint(
                "idempotency_key",
                "model_version",
                "shadow",
                name=op.f("uq_scored_notes_idempotency_key_model_version_shadow"),
            ),
        )
        op.create_index(op.f("ix_scored_notes_encounter_id"), "scored_notes", ["encounter_id"], unique=False)
        op.create_index(
            op.f("ix_scored_notes_model_version_scored_at"),
            "scored_notes",
            ["model_version", "scored_at"],
            unique=False,
        )
        op.create_index(op.f("ix_scored_notes_note_date"), "scored_notes", ["note_date"], unique=False)
        op.create_index(op.f("ix_scored_notes_patient_id"), "scored_notes", ["patient_id"], unique=False)
        op.create_index(op.f("ix_scored_notes_request_id"), "scored_notes", ["request_id"], unique=False)
        op.create_index(
            op.f("ix_scored_notes_resource_type_resource_id"),
            "scored_notes",
            ["resource_type", "resource_id"],
            unique=False,
        )
        op.create_index(op.f("ix_scored_notes_scored_at"), "scored_notes", ["scored_at"], unique=False)
    if not exists("token_uses"):
        op.create_table(
            "token_uses",
            sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
            sa.Column("issuer", sa.String(length=256), nullable=False),
            sa.Column("jti", sa.String(length=256), nullable=False),
            sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("id", name=op.f("pk_token_uses")),
            sa.UniqueConstraint("issuer", "jti", name=op.f("uq_token_uses_issuer_jti")),
        )
        op.create_index(op.f("ix_token_uses_expires_at"), "token_uses", ["expires_at"], unique=False)
    if not exists("views_census"):
        op.create_table(
            "views_census",
            sa.Column("encounter_id", sa.String(length=64), nullable=False),
            sa.Column("patient_id", sa.String(length=64), nullable=False),
            sa.Column("unit", sa.String(length=128), nullable=False),
            sa.Column("encounter_class", sa.String(length=32), nullable=False),
            sa.Column("admitted_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("discharged_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("encounter_id", name=op.f("pk_views_census")),
        )
        op.create_index(
            op.f("ix_views_census_discharged_at"), "views_census", ["discharged_at"], unique=False
        )
        op.create_index(op.f("ix_views_census_patient_id"), "views_census", ["patient_id"], unique=False)
        op.create_index(op.f("ix_views_census_unit"), "views_census", ["unit"], unique=False)
    if not exists("views_outreach_events"):
        op.create_table(
            "views_outreach_events",
            sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
            sa.Column("encounter_id", sa.String(length=64), nullable=False),
            sa.Column("patient_id", sa.String(length=64), nullable=True),
            sa.Column("status", sa.String(length=32), nullable=False),
            sa.Column("actor", sa.String(length=128), nullable=False),
            sa.Column("role", sa.String(length=64), nullable=True),
            sa.Column("request_id", sa.String(length=64), nullable=True),
            sa.Column("time", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("id", name=op.f("pk_views_outreach_events")),
        )
        op.create_index(
            op.f("ix_views_outreach_events_encounter_id_id"),
            "views_outreach_events",
            ["encounter_id", "id"],
            unique=False,
        )
    if not exists("work_jobs"):
        op.create_table(
            "work_jobs",
            sa.Column(
                "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
            ),
            sa.Column("queue", sa.String(length=64), nullable=False),
            sa.Column("key", sa.String(length=512), nullable=False),
            sa.Column("payload", sa.JSON(), nullable=False),
            sa.Column("status", sa.String(length=16), nullable=False),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("available_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("lease_owner", sa.String(length=128), nullable=True),
            sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("last_error", sa.String(length=500), nullable=True),
            sa.Column("result", sa.JSON(), nullable=True),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
            sa.PrimaryKeyConstraint("id", name=op.f("pk_work_jobs")),
            sa.UniqueConstraint("queue", "key", name=op.f("uq_work_jobs_queue_key")),
        )
        op.create_index("ix_work_jobs_due", "work_jobs", ["queue", "status", "available_at"], unique=False)
    if not exists("note_encodings"):
        op.create_table(
            "note_encodings",
            sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
            sa.Column("scored_note_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
            sa.Column("model_version", sa.String(length=128), nullable=False),
            sa.Column("vector", sa.LargeBinary(), nullable=False),
            sa.ForeignKeyConstraint(
                ["scored_note_id"],
                ["scored_notes.id"],
                name=op.f("fk_note_encodings_scored_note_id_scored_notes"),
                ondelete="CASCADE",
            ),
            sa.PrimaryKeyConstraint("id", name=op.f("pk_note_encodings")),
            sa.UniqueConstraint("scored_note_id"),
        )
        op.create_index(
            op.f("ix_note_encodings_model_version"), "note_encodings", ["model_version"], unique=False
        )
    if not exists("predictions"):
        op.create_table(
            "predictions",
            sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
            sa.Column("scored_note_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
            sa.Column("task", sa.String(length=32), nullable=False),
            sa.Column("class_index", sa.Integer(), nullable=False),
            sa.Column("probability", sa.Float(), nullable=False),
            sa.ForeignKeyConstraint(
                ["scored_note_id"],
                ["scored_notes.id"],
                name=op.f("fk_predictions_scored_note_id_scored_notes"),
                ondelete="CASCADE",
            ),
            sa.PrimaryKeyConstraint("id", name=op.f("pk_predictions")),
            sa.UniqueConstraint(
                "scored_note_id",
                "task",
                "class_index",
                name=op.f("uq_predictions_scored_note_id_task_class_index"),
            ),
        )


def downgrade() -> None:
    raise NotImplementedError("the baseline is not downgraded: drop the database instead")
