-- Enrich patients with the breast-cancer model's prediction (Synapse T-SQL PREDICT).
-- Run: scoring run --dialect tsql --model bc=models:/bc@champion \
--        --table patients=data/patients.parquet --sql sql/examples/breast_cancer.sql --output out/scored.parquet
SELECT
    d.patient_id,
    d.diagnosis,
    p.label AS predicted_diagnosis,
    p.probability AS probabilities
FROM PREDICT(MODEL = 'bc', DATA = patients AS d, RUNTIME = ONNX)
    WITH (label BIGINT, probability SQL_VARIANT) AS p
