{{ config(materialized='view') }}

select
    cast(product_id as bigint) as product_id,
    cast(name as varchar)      as product_name,
    cast(category as varchar)  as category,
    cast(price as double)      as price
from {{ source('shop', 'products') }}
