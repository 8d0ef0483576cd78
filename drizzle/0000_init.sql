CREATE TABLE "cluster_metadata" (
	"cluster_name" text PRIMARY KEY NOT NULL,
	"cluster_id" text NOT NULL,
	"is_current" boolean NOT NULL,
	"rpc_address" text NOT NULL,
	"history_shard_count" integer NOT NULL,
	"failover_version_increment" bigint NOT NULL,
	"initial_failover_version" bigint NOT NULL,
	"is_global_namespace_enabled" boolean NOT NULL,
	"enable_connection" boolean DEFAULT true NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "executions" (
	"namespace_id" text NOT NULL,
	"workflow_id" text NOT NULL,
	"run_id" text NOT NULL,
	"shard_id" integer NOT NULL,
	"workflow_type" text NOT NULL,
	"task_queue" text NOT NULL,
	"status" text NOT NULL,
	"start_time" timestamp with time zone NOT NULL,
	"close_time" timestamp with time zone,
	"execution_timeout_ms" bigint DEFAULT 0 NOT NULL,
	"next_event_id" bigint NOT NULL,
	"last_write_version" bigint NOT NULL,
	"version_history" jsonb NOT NULL,
	"cancel_requested" boolean DEFAULT false NOT NULL,
	"db_version" bigint DEFAULT 1 NOT NULL,
	CONSTRAINT "executions_namespace_id_workflow_id_run_id_pk" PRIMARY KEY("namespace_id","workflow_id","run_id")
);
--> statement-breakpoint
CREATE TABLE "history_events" (
	"namespace_id" text NOT NULL,
	"workflow_id" text NOT NULL,
	"run_id" text NOT NULL,
	"event_id" bigint NOT NULL,
	"version" bigint NOT NULL,
	"event_time" timestamp with time zone NOT NULL,
	"event_type" text NOT NULL,
	"attributes" jsonb NOT NULL,
	CONSTRAINT "history_events_namespace_id_workflow_id_run_id_event_id_pk" PRIMARY KEY("namespace_id","workflow_id","run_id","event_id")
);
--> statement-breakpoint
CREATE TABLE "namespaces" (
	"id" text PRIMARY KEY NOT NULL,
	"name" text NOT NULL,
	"state" text NOT NULL,
	"description" text DEFAULT '' NOT NULL,
	"owner_email" text DEFAULT '' NOT NULL,
	"data" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"retention_seconds" bigint NOT NULL,
	"is_global" boolean NOT NULL,
	"active_cluster_name" text NOT NULL,
	"clusters" jsonb NOT NULL,
	"replication_state" text DEFAULT 'NORMAL' NOT NULL,
	"config_version" bigint NOT NULL,
	"failover_version" bigint NOT NULL,
	"failover_history" jsonb DEFAULT '[]'::jsonb NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "namespaces_name_key" UNIQUE("name")
);
--> statement-breakpoint
CREATE TABLE "replication_tasks" (
	"shard_id" integer NOT NULL,
	"task_id" bigint NOT NULL,
	"namespace_id" text NOT NULL,
	"workflow_id" text NOT NULL,
	"run_id" text NOT NULL,
	"first_event_id" bigint NOT NULL,
	"next_event_id" bigint NOT NULL,
	"version" bigint NOT NULL,
	"version_history" jsonb NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "replication_tasks_shard_id_task_id_pk" PRIMARY KEY("shard_id","task_id")
);
--> statement-breakpoint
CREATE TABLE "request_ids" (
	"namespace_id" text NOT NULL,
	"request_id" text NOT NULL,
	"workflow_id" text NOT NULL,
	"run_id" text NOT NULL,
	"event_id" bigint NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "request_ids_namespace_id_workflow_id_request_id_pk" PRIMARY KEY("namespace_id","workflow_id","request_id")
);
--> statement-breakpoint
CREATE TABLE "shards" (
	"shard_id" integer PRIMARY KEY NOT NULL,
	"next_task_id" bigint DEFAULT 1 NOT NULL
);
--> statement-breakpoint
CREATE TABLE "timer_tasks" (
	"id" text PRIMARY KEY NOT NULL,
	"shard_id" integer NOT NULL,
	"fire_at" timestamp with time zone NOT NULL,
	"kind" text NOT NULL,
	"namespace_id" text NOT NULL,
	"workflow_id" text NOT NULL,
	"run_id" text NOT NULL,
	"version" bigint NOT NULL
);
--> statement-breakpoint
CREATE UNIQUE INDEX "executions_one_open_run" ON "executions" USING btree ("namespace_id","workflow_id") WHERE "executions"."status" = 'RUNNING';--> statement-breakpoint
CREATE INDEX "executions_ns_start" ON "executions" USING btree ("namespace_id","start_time");--> statement-breakpoint
CREATE INDEX "timer_tasks_fire_at" ON "timer_tasks" USING btree ("fire_at");