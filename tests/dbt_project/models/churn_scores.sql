-- Enrich customers with the churn model inside a dbt load (one model call per row).
select customer_id, s.label as churned, s.probabilities[2] as churn_probability
from (
    select customer_id, churn(plan, region, tenure, monthly_spend) as s
    from read_parquet('{{ env_var("CUSTOMERS") }}')
)
