CREATE TABLE "history_branch_events" (
	"namespace_id" text NOT NULL,
	"workflow_id" text NOT NULL,
	"run_id" text NOT NULL,
	"branch_id" integer NOT NULL,
	"event_id" bigint NOT NULL,
	"version" bigint NOT NULL,
	"event_time" timestamp with time zone NOT NULL,
	"event_type" text NOT NULL,
	"attributes" jsonb NOT NULL,
	CONSTRAINT "history_branch_events_namespace_id_workflow_id_run_id_branch_id_event_id_pk" PRIMARY KEY("namespace_id","workflow_id","run_id","branch_id","event_id")
);
--> statement-breakpoint
CREATE TABLE "history_branches" (
	"namespace_id" text NOT NULL,
	"workflow_id" text NOT NULL,
	"run_id" text NOT NULL,
	"branch_id" integer NOT NULL,
	"fork_event_id" bigint NOT NULL,
	"version_history" jsonb NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "history_branches_namespace_id_workflow_id_run_id_branch_id_pk" PRIMARY KEY("namespace_id","workflow_id","run_id","branch_id")
);
