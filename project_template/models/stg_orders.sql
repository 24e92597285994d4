{{ config(materialized='view') }}

-- Orders up to the end of the as_of day; later rows belong to a later snapshot.
select
    cast(order_id as bigint)      as order_id,
    cast(user_id as bigint)       as user_id,
    cast(product_id as bigint)    as product_id,
    cast(ordered_at as timestamp) as ordered_at,
    cast(quantity as integer)     as quantity,
    cast(amount as double)        as amount
from {{ source('shop', 'orders') }}
where cast(ordered_at as timestamp) < DATE '{{ var("as_of") }}' + INTERVAL 1 DAY
