CREATE TABLE "held_namespace_tasks" (
	"source_cluster" text NOT NULL,
	"task_id" bigint NOT NULL,
	"namespace_id" text NOT NULL,
	"namespace_name" text NOT NULL,
	"local_namespace_id" text NOT NULL,
	"task" jsonb NOT NULL,
	"held_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "held_namespace_tasks_source_cluster_task_id_pk" PRIMARY KEY("source_cluster","task_id")
);
--> statement-breakpoint
CREATE INDEX "held_namespace_tasks_namespace_idx" ON "held_namespace_tasks" USING btree ("namespace_id");