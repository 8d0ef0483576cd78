CREATE TABLE "backfill_jobs" (
	"namespace_id" text NOT NULL,
	"source_cluster" text NOT NULL,
	"status" text NOT NULL,
	"cursor" jsonb,
	"total" bigint DEFAULT 0 NOT NULL,
	"done" bigint DEFAULT 0 NOT NULL,
	"last_error" text,
	"started_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "backfill_jobs_namespace_id_source_cluster_pk" PRIMARY KEY("namespace_id","source_cluster")
);
--> statement-breakpoint
CREATE TABLE "replication_dlq" (
	"source_cluster" text NOT NULL,
	"shard_id" integer NOT NULL,
	"task_id" bigint NOT NULL,
	"namespace_id" text NOT NULL,
	"workflow_id" text NOT NULL,
	"run_id" text NOT NULL,
	"first_event_id" bigint NOT NULL,
	"next_event_id" bigint NOT NULL,
	"version" bigint NOT NULL,
	"attempts" integer NOT NULL,
	"last_error" text NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "replication_dlq_source_cluster_shard_id_task_id_pk" PRIMARY KEY("source_cluster","shard_id","task_id")
);
