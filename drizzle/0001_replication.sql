CREATE TABLE "namespace_replication_tasks" (
	"task_id" bigint PRIMARY KEY NOT NULL,
	"namespace_id" text NOT NULL,
	"namespace" jsonb NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "queue_counters" (
	"queue" text PRIMARY KEY NOT NULL,
	"next_id" bigint DEFAULT 1 NOT NULL
);
--> statement-breakpoint
CREATE TABLE "replication_ack_levels" (
	"remote_cluster" text NOT NULL,
	"direction" text NOT NULL,
	"queue" text NOT NULL,
	"shard_id" integer NOT NULL,
	"ack_level" bigint DEFAULT 0 NOT NULL,
	"max_task_id" bigint DEFAULT 0 NOT NULL,
	"last_applied_created_at" timestamp with time zone,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "replication_ack_levels_remote_cluster_direction_queue_shard_id_pk" PRIMARY KEY("remote_cluster","direction","queue","shard_id")
);
