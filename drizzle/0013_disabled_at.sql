ALTER TABLE "cluster_metadata" ADD COLUMN "disabled_at" timestamp with time zone;--> statement-breakpoint
UPDATE "cluster_metadata" SET "disabled_at" = "updated_at" WHERE NOT "enable_connection";