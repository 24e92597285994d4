{{ config(materialized='incremental', unique_key='user_id', delete_not_in=ref('stg_users')) }}

-- Exactly one row per user, users without orders included.
-- Numeric features are never NULL: users without orders get orders = 0,
-- revenue = 0 and recency_days = 3650 (a large, finite "never").
--
-- Incremental: a run recomputes only the users whose row can differ from the
-- stored one (new users, changed user records, users with orders or events
-- from the newest already counted on: >=, so one stamped the same second
-- is not missed); rows of users no longer in
-- stg_users are deleted (delete_not_in). A new as_of or lookback_days
-- changes this SQL, and a model whose SQL changed is rebuilt in full.
-- Edits to past orders or events, or to the product catalogue, are not
-- seen by the incremental branch: run with --full-refresh after them.
with
{% if is_incremental() %}
touched as (
    -- an anti join, not `where not exists (...)`: DuckDB plans the correlated
    -- form slower (0.115 s against 0.05 s at 200,000 users)
    select u.user_id from {{ ref('stg_users') }} as u
    anti join {{ this }} as t
        on t.user_id = u.user_id
        and t.signup_at is not distinct from u.signup_at
        and t.country is not distinct from u.country
        and t.channel is not distinct from u.channel
    union
    select user_id from {{ ref('orders_enriched') }}
    where ordered_at >= (select coalesce(max(last_order_at), '-infinity'::timestamp) from {{ this }})
    union
    select user_id from {{ ref('stg_events') }}
    where event_at >= (select coalesce(max(last_event_at), '-infinity'::timestamp) from {{ this }})
),
{% endif %}

users as (
    select * from {{ ref('stg_users') }}
    {% if is_incremental() %}where user_id in (select user_id from touched){% endif %}
),

orders as (
    select *
    from {{ ref('orders_enriched') }}
    where ordered_at < DATE '{{ var("as_of") }}' + INTERVAL 1 DAY
    {% if is_incremental() %}and user_id in (select user_id from touched){% endif %}
),

events as (
    select * from {{ ref('stg_events') }}
    {% if is_incremental() %}where user_id in (select user_id from touched){% endif %}
),

order_stats as (
    select
        user_id,
        min(ordered_at)          as first_order_at,
        max(ordered_at)          as last_order_at,
        count(*)                 as orders,
        -- exact decimal sums: a DOUBLE sum's last bits depend on the order of the
        -- parallel aggregation, which would make reruns see 'changed' users
        sum(cast(amount as decimal(18, 2))) as revenue,
        count(distinct category) as n_categories
    from orders
    group by user_id
),

per_category as (
    select user_id, category, count(*) as n, sum(cast(amount as decimal(18, 2))) as amount
    from orders
    group by user_id, category
),

categories as (
    -- ties broken by spend, then name, so the result is deterministic
    select
        user_id,
        list(struct_pack(category := category, n := n)
             order by n desc, amount desc, category) as category_counts
    from per_category
    group by user_id
),

recent as (
    -- up to 5 distinct products, most recently bought first
    select user_id, list(product_name order by last_at desc, product_name) as recent_products
    from (
        select user_id, product_name, max(ordered_at) as last_at
        from orders
        group by user_id, product_name
        qualify row_number() over (
            partition by user_id order by max(ordered_at) desc, product_name
        ) <= 5
    )
    group by user_id
),

activity as (
    select
        user_id,
        max(event_at) as last_event_at,
        count(*) filter (
            where event_type = 'view'
              and event_at >= DATE '{{ var("as_of") }}' + INTERVAL 1 DAY
                              - INTERVAL {{ var("lookback_days") }} DAY
        ) as views_lookback
    from events
    group by user_id
),

browsed as (
    -- the category a user looks at most (views, carts, wishlists; searches have no product)
    select user_id, first(category order by n desc, category) as top_viewed_category
    from (
        select e.user_id, p.category, count(*) as n
        from events as e
        join {{ ref('stg_products') }} as p using (product_id)
        group by e.user_id, p.category
    )
    group by user_id
)

select
    u.user_id,
    u.signup_at,
    u.country,
    u.channel,
    s.first_order_at,
    s.last_order_at,
    a.last_event_at,
    coalesce(date_diff('day', cast(s.last_order_at as date), DATE '{{ var("as_of") }}'), 3650)
                                                          as recency_days,
    coalesce(s.orders, 0)                                 as orders,
    cast(coalesce(s.revenue, 0) as double)                as revenue,
    cast(round(coalesce(s.revenue / nullif(s.orders, 0), 0), 2) as double) as avg_order_value,
    coalesce(c.category_counts[1].category, 'none')       as top_category,
    coalesce(s.n_categories, 0)                           as n_categories,
    coalesce(a.views_lookback, 0)                         as views_lookback,
    coalesce(r.recent_products, []::varchar[])            as recent_products,
    coalesce(c.category_counts, []::struct(category varchar, n bigint)[])
                                                          as category_counts,
    coalesce(b.top_viewed_category, 'none')               as top_viewed_category
from users as u
left join order_stats as s using (user_id)
left join categories  as c using (user_id)
left join recent      as r using (user_id)
left join activity    as a using (user_id)
left join browsed     as b using (user_id)
order by u.user_id
