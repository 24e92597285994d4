{{ config(materialized='incremental', unique_key='order_id') }}

-- Orders with product name and category. Incremental: each run merges the
-- orders from the newest one already loaded on (>=: an order stamped the
-- same second as the newest is not lost; unique_key replaces those merged
-- before).
select
    o.order_id,
    o.user_id,
    o.product_id,
    o.ordered_at,
    o.quantity,
    o.amount,
    coalesce(p.product_name, 'Unknown product') as product_name,
    coalesce(p.category, 'Unknown')             as category,
    p.price                                     as unit_price
from {{ ref('stg_orders') }} as o
left join {{ ref('stg_products') }} as p using (product_id)
{% if is_incremental() %}
-- coalesce: a first build with no orders leaves max() NULL, and `>= NULL` would
-- load nothing ever after
where o.ordered_at >= (select coalesce(max(ordered_at), '-infinity'::timestamp) from {{ this }})
{% endif %}
