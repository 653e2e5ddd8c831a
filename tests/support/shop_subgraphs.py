"""The four subgraphs of tests/support/graphql/shop.graphql (accounts, products, inventory,
reviews), served by graphql-core with their data, and the supergraph written for their
ports. Expected answers in the tests are worked out by hand from DATA."""
from __future__ import annotations

import copy
import os
import re

from graphql import GraphQLError

from .subgraphs import Subgraph

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "graphql")

DATA = {
    "products": {"1": {"upc": "1", "sku": "S1", "name": "Table", "price": 899, "weight": 100, "internalCode": "T-1"},
                 "2": {"upc": "2", "sku": "S2", "name": "Couch", "price": 1299, "weight": 1000, "internalCode": "C-2"},
                 "3": {"upc": "3", "sku": "S3", "name": "Chair", "price": 54, "weight": 50, "internalCode": "C-3"}},
    "in_stock": {"1": True, "2": False, "3": True},
    "users": {"1": {"id": "1", "name": "Ada Lovelace", "username": "@ada", "birthDate": "1815-12-10"},
              "2": {"id": "2", "name": "Alan Turing", "username": "@complete", "birthDate": "1912-06-23"}},
    "reviews": [{"id": "1", "author": "1", "upc": "1", "body": "Love it!", "rating": 5},
                {"id": "2", "author": "1", "upc": "2", "body": "Too expensive.", "rating": 2},
                {"id": "3", "author": "2", "upc": "3", "body": "Could be better.", "rating": 3},
                {"id": "4", "author": "2", "upc": "1", "body": "Prefer something else.", "rating": 4}],
    "books": [{"title": "Dune", "author": "Herbert"}, {"title": "Database Design", "author": "Codd"}],
    "media": [{"__typename": "Movie", "id": "m1", "title": "Hackers", "minutes": 105},
              {"__typename": "Song", "id": "s1", "title": "Blue Monday", "seconds": 449}],
}

PRODUCTS_SDL = """
type Query { topProducts(first: Int = 5): [Product] product(upc: String!): Product search(text: String!): [SearchResult!]!
             media: [Media] }
type Mutation { setPrice(upc: String!, price: Int!): Product }
type Product @key(fields: "upc") @key(fields: "sku") { upc: String! sku: String! name: String price: Int weight: Int
                                                       internalCode: String @inaccessible }
union SearchResult = Product | Book
type Book { title: String! author: String }
interface Media { id: ID! title: String }
type Movie implements Media { id: ID! title: String minutes: Int }
type Song implements Media { id: ID! title: String seconds: Int }
"""

INVENTORY_SDL = """
type Product @key(fields: "upc") { upc: String! price: Int @external weight: Int @external inStock: Boolean
                                   shippingEstimate: Int @requires(fields: "price weight") }
"""

REVIEWS_SDL = """
type Query { latestReview: Review! }
type Mutation { addReview(upc: String!, body: String!): Review }
type Review @key(fields: "id") { id: ID! body: String rating: Int! author: User @provides(fields: "username")
                                 product: Product }
type User @key(fields: "id") { id: ID! username: String @external reviews: [Review] }
type Product @key(fields: "upc") { upc: String! reviews: [Review] }
"""

ACCOUNTS_SDL = """
type Query { me: User user(id: ID!): User }
type User @key(fields: "id") { id: ID! name: String username: String birthDate: String @inaccessible }
"""


class Shop:
    def __init__(self):
        self.data = copy.deepcopy(DATA)
        d = self.data

        def review_view(r):
            return {"id": r["id"], "body": r["body"], "rating": r["rating"],
                    "author": {"__typename": "User", "id": r["author"], "username": d["users"][r["author"]]["username"]},
                    "product": {"__typename": "Product", "upc": r["upc"]}}

        def user(_, info, id):
            if id not in d["users"]:
                raise GraphQLError(f"no user {id}")
            return d["users"][id]

        def set_price(_, info, upc, price):
            d["products"][upc]["price"] = price
            return d["products"][upc]

        def add_review(_, info, upc, body):
            review = {"id": str(len(d["reviews"]) + 1), "author": "1", "upc": upc, "body": body, "rating": 5}
            d["reviews"].append(review)
            return review_view(review)

        def search(_, info, text):
            text = text.lower()
            return ([{"__typename": "Product", **p} for p in d["products"].values() if text in p["name"].lower()] +
                    [{"__typename": "Book", **b} for b in d["books"] if text in b["title"].lower()])

        def product_reference(rep):
            if "upc" in rep:
                return d["products"].get(rep["upc"])
            return next((p for p in d["products"].values() if p["sku"] == rep.get("sku")), None)

        self.products = Subgraph("products", PRODUCTS_SDL, resolvers={
            "Query.topProducts": lambda _, info, first=5: list(d["products"].values())[:first],
            "Query.product": lambda _, info, upc: d["products"].get(upc),
            "Query.search": search,
            "Query.media": lambda *_: d["media"],
            "Mutation.setPrice": set_price,
        }, references={"Product": product_reference}, entities=("Product",))
        self.inventory = Subgraph("inventory", INVENTORY_SDL, resolvers={
            "Product.shippingEstimate": lambda p, info: 0 if p["price"] > 1000 else p["weight"] // 2,
        }, references={"Product": lambda rep: {**rep, "inStock": d["in_stock"].get(rep["upc"])}},
            entities=("Product",))
        self.reviews = Subgraph("reviews", REVIEWS_SDL, resolvers={
            "Query.latestReview": lambda *_: review_view(d["reviews"][-1]),
            "Mutation.addReview": add_review,
            "User.reviews": lambda u, info: [review_view(r) for r in d["reviews"] if r["author"] == u["id"]],
            "Product.reviews": lambda p, info: [review_view(r) for r in d["reviews"] if r["upc"] == p["upc"]],
        }, references={"Review": lambda rep: next((review_view(r) for r in d["reviews"] if r["id"] == rep["id"]), None),
                       "User": lambda rep: {"id": rep["id"]}, "Product": lambda rep: {"upc": rep["upc"]}},
            entities=("Review", "User", "Product"))
        self.accounts = Subgraph("accounts", ACCOUNTS_SDL, resolvers={
            "Query.me": lambda *_: d["users"]["1"],
            "Query.user": user,
        }, references={"User": lambda rep: d["users"].get(rep["id"])}, entities=("User",))
        self.all = {"accounts": self.accounts, "products": self.products, "inventory": self.inventory,
                    "reviews": self.reviews}

    def start(self) -> "Shop":
        for s in self.all.values():
            s.start()
        return self

    def stop(self) -> None:
        for s in self.all.values():
            s.stop()

    def reset(self) -> None:
        self.data.clear()
        self.data.update(copy.deepcopy(DATA))
        for s in self.all.values():
            s.operations.clear()
            s.fail = None
            s.delay = 0.0

    def supergraph(self, name: str = "shop.graphql", **urls) -> str:
        """The supergraph text with these subgraphs' ports (or `urls` given by name)."""
        return supergraph_text(name, {n: urls.get(n, s.url) for n, s in self.all.items()})


def supergraph_text(name: str, urls: dict) -> str:
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        text = f.read()
    with open(os.path.join(HERE, "header.graphql"), encoding="utf-8") as f:
        text = text.replace("#include header.graphql", f.read())
    return re.sub(r"http://127\.0\.0\.1:\{(\w+)\}/graphql", lambda m: urls[m.group(1)], text)
